"""The engine core: scheduler + model runner, one ``step()`` at a time. Token ids in, token
ids out; no tokenizer here (it runs in its own process when serving)."""
from __future__ import annotations

import logging
import time

from pagedserve.config import GiB, EngineConfig
from pagedserve.core.scheduler import Scheduler
from pagedserve.core.scheduler_output import EngineCoreOutput
from pagedserve.core.stats import SchedulerStats
from pagedserve.engine.request import Request, RequestStatus
from pagedserve.worker.block_ops import BlockOps
from pagedserve.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)


class EngineCore:
    def __init__(self, config: EngineConfig, use_tqdm: bool = True) -> None:
        t0 = time.perf_counter()
        self.config = config
        self.runner = ModelRunner(config, use_tqdm=use_tqdm)
        num_blocks = self.runner.determine_num_blocks()
        self.runner.initialize_kv_cache(num_blocks)
        self.graph_capture_seconds = self.runner.capture_cuda_graphs()
        config.cache_config.num_gpu_blocks = num_blocks
        num_cpu_blocks = self._num_cpu_blocks()
        config.cache_config.num_cpu_blocks = num_cpu_blocks
        self.runner.block_ops = BlockOps(self.runner.kv_cache, num_cpu_blocks)  # CoW copies and swaps
        self.scheduler = Scheduler(config.scheduler_config, config.cache_config, num_blocks, num_cpu_blocks)
        self.startup_seconds = time.perf_counter() - t0
        logger.info("engine core ready in %.2f s", self.startup_seconds)

    def _num_cpu_blocks(self) -> int:
        """The CPU swap pool: ``swap_space`` GiB of blocks, only when preemption may swap."""
        cfg = self.config
        if cfg.scheduler_config.preemption_mode == "recompute" or cfg.cache_config.swap_space <= 0:
            return 0
        return int(cfg.cache_config.swap_space * GiB // self.runner.kv_block_bytes())

    def add_request(self, request: Request) -> None:
        self.scheduler.add_request(request)

    def abort_requests(self, request_ids: list[str]) -> None:
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def step(self) -> list[EngineCoreOutput]:
        sched = self.scheduler.schedule()
        if sched.is_empty and not sched.block_ops:
            return []
        out = self.runner.execute_model(sched)
        return self.scheduler.update_from_output(sched, out.sampled, out.logprobs, out.prompt_logprobs)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def get_stats(self) -> SchedulerStats:
        return self.scheduler.get_stats()
