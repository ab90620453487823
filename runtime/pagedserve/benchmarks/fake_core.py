"""A model-free engine core for measuring the HTTP layer alone (``--engine-core-factory``).

Every step "runs" for ``PAGEDSERVE_FAKE_STEP_MS`` milliseconds (default 20, a sleep standing in
for the GPU) and gives each running request one token (a deterministic, decodable id), up to
``--max-num-seqs`` requests at a time. With it, ``bench serve`` measures how many tokens per
second the frontend (IPC, detokenization, SSE) can deliver, independently of any model::

    pagedserve serve --model default --engine-core-factory pagedserve.benchmarks.fake_core:FakeEngineCore
"""
from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

from pagedserve.core.scheduler_output import EngineCoreOutput
from pagedserve.core.stats import SchedulerStats


class _Sched:
    def __init__(self) -> None:
        self.running: list[Any] = []
        self.waiting: deque[Any] = deque()


class FakeEngineCore:
    def __init__(self, config: Any, use_tqdm: bool = False) -> None:
        self.config = config
        self.step_s = float(os.environ.get("PAGEDSERVE_FAKE_STEP_MS", "20")) / 1000.0
        self.max_seqs = config.scheduler_config.max_num_seqs
        self.num_blocks = 1 << 20
        config.cache_config.num_gpu_blocks = self.num_blocks
        self.scheduler = _Sched()
        self.tokens = [1000 + (i * 37) % 20000 for i in range(997)]  # ordinary ids, decodable by most vocabularies
        self.startup_seconds = 0.0

    def add_request(self, req: Any) -> None:
        self.scheduler.waiting.append(req)

    def abort_requests(self, ids: list[str]) -> None:
        drop = set(ids)
        s = self.scheduler
        s.running = [r for r in s.running if r.request_id not in drop]
        s.waiting = deque(r for r in s.waiting if r.request_id not in drop)

    def has_unfinished_requests(self) -> bool:
        return bool(self.scheduler.running or self.scheduler.waiting)

    def step(self) -> list[EngineCoreOutput]:
        s = self.scheduler
        while s.waiting and len(s.running) < self.max_seqs:
            s.running.append(s.waiting.popleft())
        time.sleep(self.step_s)
        outs, keep = [], []
        toks = self.tokens
        for r in s.running:
            n = r.num_output_tokens
            tok = toks[(n + len(r.request_id)) % len(toks)]
            r.append_output_token(tok)
            done = r.num_output_tokens >= r.max_tokens
            outs.append(EngineCoreOutput(r.request_id, [tok], "length" if done else None))
            if not done:
                keep.append(r)
        s.running = keep
        return outs

    def get_stats(self) -> SchedulerStats:
        return SchedulerStats(num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
                              num_gpu_blocks=self.num_blocks)
