"""What the mp and Ray executors share once their ranks run: every call guarded against a dead
rank, and the step split into ``launch`` / ``collect`` (with pipeline stages, the earlier stages
start in ``launch`` and this process, the last stage, runs in ``collect``).

A subclass sets ``_g`` (its group of ranks: ``closed``, ``dead``, ``failed``, ``raised``, ``busy``,
``find_dead(timeout)``, ``failure_message()``), ``runner``, ``pp_size``, ``name`` (for messages),
``dead_wait_s`` (how long a failed call waits for a rank's death to show), and sends a step to its
other ranks in ``_send_step``."""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from pagedserve.distributed.parallel_state import abort_distributed, run_bounded
from pagedserve.executor.base import Executor

logger = logging.getLogger(__name__)


def after_rank_death(g: Any, grace_s: float) -> None:
    """The group's monitor saw a rank die: abort NCCL collectives in flight (bounded: the abort itself
    can block), then give the driver ``grace_s`` to leave its call with the error; a driver still stuck
    in a collective after that exits the process (code 70) rather than hang."""
    if g.backend == "nccl" and g.dist_up:
        run_bounded(abort_distributed, 5, "process group abort")
        g.dist_up = False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if g.closed or g.raised or g.busy == 0:
            return
        time.sleep(0.05)
    if g.busy and not g.raised and not g.closed:
        msg = g.failure_message()
        logger.critical("%s; the driver is stuck in a collective: exiting", msg)
        os.write(2, f"pagedserve: {msg}; the driver is stuck in a collective: exiting\n".encode())
        os._exit(70)


@dataclass
class PendingStage:
    """A batch sent into the pipeline whose last stage (this process) has not run yet: the engine
    core schedules further batches meanwhile, and ``collect`` runs it (batches stay in order)."""

    h: Any
    block_ops: list
    sched: Any


class RankGroupExecutor(Executor):
    _g: Any
    pp_size: int = 1
    name = "executor"
    dead_wait_s = 1.0

    @contextmanager
    def _call(self) -> Iterator[None]:
        g = self._g
        if g.closed:
            raise RuntimeError(f"the {self.name} is shut down")
        if g.dead is not None:
            g.raised = True
            raise RuntimeError(g.failure_message())
        if g.failed is not None:
            raise RuntimeError(f"the {self.name} failed in an earlier call ({g.failed}); restart it")
        g.busy += 1
        try:
            yield
        except Exception as e:
            if g.find_dead(self.dead_wait_s) is not None:  # a collective or a pipe failed: a rank is gone
                g.raised = True
                raise RuntimeError(g.failure_message()) from e
            g.failed = f"{type(e).__name__}: {e}"  # the other ranks may wait in a collective for good
            raise
        finally:
            g.busy -= 1

    def _send_step(self, h: Any, block_ops: list) -> None:
        raise NotImplementedError

    def launch(self, sched, prev=None):  # noqa: ANN001, ANN201 (Executor's signature)
        from pagedserve.worker.input_batch import prepare_inputs

        with self._call():
            h = None
            if not sched.is_empty:
                h = prepare_inputs(sched.scheduled, self.runner.block_size, prev.row_of if prev is not None else None)
            self._send_step(h, sched.block_ops)
            if self.pp_size > 1:  # the earlier stages start now; this (last) stage runs in collect
                return PendingStage(h, sched.block_ops, sched)
            return self.runner.launch_inputs(h, sched.block_ops, prev, sched)

    def collect(self, handle):  # noqa: ANN001, ANN201
        with self._call():
            if isinstance(handle, PendingStage):  # pipeline: receive, run the last stage, sample
                handle = self.runner.launch_inputs(handle.h, handle.block_ops, None, handle.sched)
            if handle.event is not None:
                handle.event.synchronize()
                if self._g.dead is not None:  # released by the abort: the step did not happen
                    raise RuntimeError(f"a worker of the {self.name} died during the step")
            return self.runner.collect(handle)

    def check_health(self) -> None:
        if self._g.find_dead(0.0) is not None:
            self._g.raised = True
            raise RuntimeError(self._g.failure_message())
