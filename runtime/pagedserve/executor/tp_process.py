"""What one process may hold for tensor parallelism, and how it starts the ranks: one group per
process (torch.distributed's default group), a GPU tensor-parallel engine only as the process's
first GPU engine, and the spawning of the worker processes from the engine-core process."""
from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import os
import sys
import weakref
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from pagedserve.executor.multiproc import MultiprocExecutor

logger = logging.getLogger(__name__)

_ACTIVE: "weakref.ref[MultiprocExecutor] | None" = None  # the tensor-parallel engine of this process


LATER_ENGINE_ENV = "PAGEDSERVE_ALLOW_LATER_TP_ENGINE"


def check_first_gpu_engine(device: str, earlier: int | None = None) -> None:
    """On GPUs a tensor-parallel engine must be the first engine of its process. On 2 x H200 a TP=2
    engine created after another engine (TP=1 or TP=2) in the same driver process stalled for good
    in a 256-request run, at the same step every time (RESULTS.md runs 7, 10, 17-19); started
    first, it never did. The cause is not found yet, so refuse with a clear error instead of a
    hang (the server runs each engine core in its own process). ``PAGEDSERVE_ALLOW_LATER_TP_ENGINE=1``
    lifts the check (small models in one process passed the equality checks)."""
    from pagedserve.worker import model_runner

    n = model_runner.CUDA_RUNNERS_CREATED if earlier is None else earlier
    if device.startswith("cuda") and n > 0 and os.environ.get(LATER_ENGINE_ENV) != "1":
        raise RuntimeError(
            f"a tensor-parallel engine must be the first GPU engine of its process ({n} engine(s) ran here "
            f"before): a later one stalled on 2 x H200 (cause under investigation). Start it in a new process "
            f"(the OpenAI server runs each engine in its own process), or set {LATER_ENGINE_ENV}=1 to try anyway")


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


@contextmanager
def spawn_workers() -> Iterator[None]:
    """Around ``Process.start()`` of the ranks:

    * the engine-core process is a daemonic multiprocessing child, and those may not start
      processes: lift the flag (the ranks are tied to it by their watchdog instead);
    * 'spawn' re-imports the ``__main__`` script in each child unless it cannot find it: hide it
      (``worker_main`` lives in this package), so a user's script without an
      ``if __name__ == "__main__":`` guard neither fails nor runs twice."""
    cur = mp.current_process()
    daemon = cur._config.get("daemon")  # type: ignore[attr-defined]
    cur._config["daemon"] = False  # type: ignore[attr-defined]
    main = sys.modules.get("__main__")
    hidden = {}
    if main is not None:
        for attr in ("__spec__", "__file__"):
            if attr in vars(main):
                hidden[attr] = vars(main)[attr]
        main.__spec__ = None
        vars(main).pop("__file__", None)
    try:
        yield
    finally:
        if main is not None:
            main.__spec__ = hidden.get("__spec__")
            if "__file__" in hidden:
                main.__file__ = hidden["__file__"]
        if daemon is not None:
            cur._config["daemon"] = daemon  # type: ignore[attr-defined]
        else:
            cur._config.pop("daemon", None)  # type: ignore[attr-defined]
