"""One rank, in this process: the engine core's calls go straight to the model runner."""
from __future__ import annotations

from typing import Any

from pagedserve.config import EngineConfig
from pagedserve.executor.base import Executor
from pagedserve.executor.worker_proc import RankWorker


class UniProcExecutor(Executor):
    def __init__(self, config: EngineConfig, use_tqdm: bool = True) -> None:
        self.worker = RankWorker(config, 0, 1, use_tqdm=use_tqdm)
        self.runner = self.worker.runner

    def collective_rpc(self, method: str, *args: Any) -> list[Any]:
        return [getattr(self.worker, method)(*args)]

    def launch(self, sched, prev=None):
        return self.runner.launch(sched, prev)

    def collect(self, handle):
        return self.runner.collect(handle)

    def shutdown(self) -> None:
        """Drop the model, KV cache and CUDA graphs so their memory can go back to the device."""
        import gc

        import torch

        self.worker = self.runner = None  # type: ignore[assignment]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
