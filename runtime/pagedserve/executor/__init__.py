"""Executors: how the engine core's steps reach the model — one process (``uniproc``) or one
process per rank, tensor-parallel ranks times pipeline stages (``multiproc``), or one Ray actor
per rank across nodes (``ray_executor``, ``--distributed-executor-backend ray``), behind the same
API (``base.Executor``)."""
from __future__ import annotations

from pagedserve.config import EngineConfig
from pagedserve.executor.base import Executor


def make_executor(config: EngineConfig, use_tqdm: bool = True) -> Executor:
    pc = config.parallel_config
    if pc.tensor_parallel_size * pc.pipeline_parallel_size == 1:
        from pagedserve.executor.uniproc import UniProcExecutor

        return UniProcExecutor(config, use_tqdm=use_tqdm)
    if pc.distributed_executor_backend == "ray":
        from pagedserve.executor.ray_executor import RayExecutor

        return RayExecutor(config, use_tqdm=use_tqdm)
    from pagedserve.executor.multiproc import MultiprocExecutor

    return MultiprocExecutor(config, use_tqdm=use_tqdm)


__all__ = ["Executor", "make_executor"]
