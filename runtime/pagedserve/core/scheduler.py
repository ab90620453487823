"""Continuous batching with chunked prefill under one token budget.

Every step hands out up to ``max_num_batched_tokens`` tokens: running requests first (usually one
decode token each, or their next prefill chunk), then waiting requests in arrival order while
``max_num_seqs`` allows. When the pool runs out of blocks the latest-arrived running request is
preempted by recompute: its blocks are freed and it restarts from prompt + generated tokens.
"""
from __future__ import annotations

import logging
from collections import deque

from pagedserve.config import CacheConfig, SchedulerConfig
from pagedserve.core.kv_cache_manager import KVCacheManager
from pagedserve.core.scheduler_output import EngineCoreOutput, ScheduledRequest, SchedulerOutput
from pagedserve.core.stats import SchedulerStats
from pagedserve.engine.request import Request, RequestStatus

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig, num_blocks: int) -> None:
        self.config = scheduler_config
        self.kv = KVCacheManager(num_blocks, cache_config.block_size)
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    # -- admission ----------------------------------------------------------------------------
    def check_fits(self, num_prompt_tokens: int) -> None:
        """Reject requests that can never run (raise ValueError naming the limit)."""
        max_len = self.config.max_model_len
        if num_prompt_tokens > max_len:
            raise ValueError(f"prompt is {num_prompt_tokens} tokens, longer than max_model_len={max_len}")
        if num_prompt_tokens == 0:
            raise ValueError("prompt is empty: at least one token is needed")
        if not self.kv.can_ever_fit(num_prompt_tokens + 1):
            raise ValueError(f"prompt is {num_prompt_tokens} tokens, more than the whole KV cache holds "
                             f"({self.kv.num_blocks} blocks of {self.kv.block_size} tokens)")

    def add_request(self, request: Request) -> None:
        self.check_fits(request.num_prompt_tokens)
        if request.request_id in self.requests:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> list[Request]:
        done = []
        for rid in request_ids:
            req = self.requests.get(rid)
            if req is None or req.is_finished:
                continue
            if req.status == RequestStatus.RUNNING:
                self.running.remove(req)
            else:
                self.waiting.remove(req)
            req.status = status
            self._free(req)
            done.append(req)
        return done

    # -- scheduling ---------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        preempted: list[Request] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = self._num_new_tokens(req, budget)
            block_ids = self.kv.allocate_slots(req, n)
            while block_ids is None:
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim)
                if victim is req:
                    break
                block_ids = self.kv.allocate_slots(req, n)
            if block_ids is None:
                break
            out.scheduled.append(self._scheduled(req, n, block_ids))
            budget -= n
            i += 1
        if not preempted:
            while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
                req = self.waiting[0]
                n = self._num_new_tokens(req, budget)
                block_ids = self.kv.allocate_slots(req, n)
                if block_ids is None:
                    break
                self.waiting.popleft()
                req.status = RequestStatus.RUNNING
                self.running.append(req)
                out.scheduled.append(self._scheduled(req, n, block_ids))
                budget -= n
        out.preempted_ids = [r.request_id for r in preempted]
        out.total_num_scheduled_tokens = self.config.max_num_batched_tokens - budget
        for s in out.scheduled:  # advance now so the next schedule() sees this step's work
            s.request.num_computed_tokens += s.num_tokens
        return out

    def _num_new_tokens(self, req: Request, budget: int) -> int:
        n = req.num_tokens - req.num_computed_tokens
        if self.config.long_prefill_token_threshold > 0:
            n = min(n, self.config.long_prefill_token_threshold)
        return min(n, budget)

    def _scheduled(self, req: Request, n: int, block_ids: list[int]) -> ScheduledRequest:
        start = req.num_computed_tokens
        return ScheduledRequest(req, n, start, block_ids, do_sample=start + n == req.num_tokens)

    def _preempt(self, req: Request) -> None:
        self.kv.free(req)
        lost = req.num_computed_tokens
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = RequestStatus.PREEMPTED
        self.num_preemptions += 1
        self.waiting.appendleft(req)
        logger.info("request %s preempted (mode=recompute, %d tokens to recompute, preemption #%d)",
                    req.request_id, lost, req.num_preemptions)

    def _free(self, req: Request) -> None:
        self.kv.free(req)
        self.requests.pop(req.request_id, None)

    # -- after the forward pass ---------------------------------------------------------------
    def update_from_output(self, sched: SchedulerOutput, sampled: dict[str, int],
                           logprobs: dict[str, object] | None = None,
                           prompt_logprobs: dict[str, list] | None = None) -> list[EngineCoreOutput]:
        outputs: list[EngineCoreOutput] = []
        logprobs = logprobs or {}
        prompt_logprobs = prompt_logprobs or {}
        for s in sched.scheduled:
            req = s.request
            if req.is_finished:
                continue
            new_tokens: list[int] = []
            if s.do_sample and req.request_id in sampled:
                token = sampled[req.request_id]
                req.append_output_token(token)
                new_tokens.append(token)
                self._check_stop(req, token)
            plp = self._new_prompt_logprobs(req, prompt_logprobs.get(req.request_id))
            if not new_tokens and plp is None:
                continue
            lp = logprobs.get(req.request_id)
            outputs.append(EngineCoreOutput(
                req.request_id, new_tokens, req.status.finish_reason, req.stop_reason,
                [lp] if lp is not None else None, plp, req.num_cached_tokens))
            if req.is_finished:
                self.running.remove(req)
                self._free(req)
        return outputs

    @staticmethod
    def _new_prompt_logprobs(req: Request, scored: tuple[int, list] | None) -> list | None:
        """Keep prompt logprobs not reported before (a recomputed request scores them again)."""
        if scored is None:
            return None
        first, entries = scored
        fresh = entries[max(0, len(req.prompt_logprobs) + 1 - first):]
        req.prompt_logprobs.extend(fresh)
        return fresh or None

    def _check_stop(self, req: Request, token: int) -> None:
        sp = req.sampling_params
        if req.num_output_tokens >= sp.min_tokens:
            if not sp.ignore_eos and token in req.eos_token_ids:
                req.status, req.stop_reason = RequestStatus.FINISHED_STOPPED, None
                return
            if token in sp.stop_token_ids:
                req.status, req.stop_reason = RequestStatus.FINISHED_STOPPED, token
                return
        capacity = min(self.config.max_model_len, self.kv.num_blocks * self.kv.block_size)
        if req.num_output_tokens >= req.max_tokens or req.num_tokens >= capacity:
            req.status = RequestStatus.FINISHED_LENGTH_CAPPED

    # -- state --------------------------------------------------------------------------------
    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def get_num_unfinished_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    def get_stats(self) -> SchedulerStats:
        return SchedulerStats(num_running=len(self.running), num_waiting=len(self.waiting),
                              kv_cache_usage=self.kv.usage, num_preemptions_total=self.num_preemptions,
                              num_gpu_blocks=self.kv.num_blocks, block_size=self.kv.block_size)
