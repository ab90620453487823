"""What one process may hold for tensor parallelism: one group per process (torch.distributed's
default group), and a later GPU tensor-parallel engine only with NCCL's graph-buffer registration
off. (``pagedserve.spawn`` starts the worker processes.)"""
from __future__ import annotations

import gc
import logging
import os
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pagedserve.executor.multiproc import MultiprocExecutor

logger = logging.getLogger(__name__)

_ACTIVE: "weakref.ref[MultiprocExecutor] | None" = None  # the tensor-parallel engine of this process


LATER_ENGINE_ENV = "PAGEDSERVE_ALLOW_LATER_TP_ENGINE"


def check_later_tp_engine(device: str, earlier: int | None = None) -> None:
    """With NCCL's graph-buffer registration on, a GPU TP=2 engine created after another engine in
    the same driver process stalled for good in a 256-request run (2 x H200, RESULTS.md runs 7, 10,
    17-19, 25). pagedserve turns the registration off (``parallel_state.NCCL_DEFAULT_ENV``), and then
    the same sequence completes (runs 24-26). A user who turns it back on
    (``NCCL_GRAPH_REGISTER`` other than 0) gets a clear error for a later engine instead of the
    hang; ``PAGEDSERVE_ALLOW_LATER_TP_ENGINE=1`` lifts the check."""
    from pagedserve.worker import model_runner

    n = model_runner.CUDA_RUNNERS_CREATED if earlier is None else earlier
    registering = os.environ.get("NCCL_GRAPH_REGISTER", "0") != "0"
    if device.startswith("cuda") and n > 0 and registering and os.environ.get(LATER_ENGINE_ENV) != "1":
        raise RuntimeError(
            f"NCCL_GRAPH_REGISTER={os.environ['NCCL_GRAPH_REGISTER']}: with NCCL's graph-buffer registration on, a "
            f"tensor-parallel engine that is not the first GPU engine of its process ({n} ran here before) stalled "
            f"on 2 x H200. Unset NCCL_GRAPH_REGISTER (pagedserve sets it to 0), start the engine in a new process, "
            f"or set {LATER_ENGINE_ENV}=1 to try anyway")


def claim_process(ex: "MultiprocExecutor") -> None:
    """One tensor-parallel group per process (torch.distributed's default group): an older engine
    still running here is shut down first."""
    global _ACTIVE
    gc.collect()  # an unreachable engine in a reference cycle: its finalizer shuts it down
    old = _ACTIVE() if _ACTIVE is not None else None
    if old is not None and not old._g.closed:
        logger.warning("a tensor-parallel engine was still running in this process: shutting it down "
                       "(one tensor-parallel engine per process)")
        old.shutdown()
    _ACTIVE = weakref.ref(ex)


def release_process(ex: "MultiprocExecutor") -> None:
    """``ex`` has shut down: a later engine need not stop it."""
    global _ACTIVE
    if _ACTIVE is not None and _ACTIVE() is ex:
        _ACTIVE = None
