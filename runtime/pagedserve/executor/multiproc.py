"""Tensor and pipeline parallelism: one process per rank, ``tp x pp`` ranks (pipeline stages:
docs/pipeline_parallel.md; the driver is tensor rank 0 of the last stage). Rank 0 (the driver)
lives in this (the engine-core) process, keeps the scheduler and samples; ranks 1..N-1 are
spawned here (``worker_proc.py``).

Per step the driver builds the step's host inputs once (``prepare_inputs``), sends them pickled
to every worker over a pipe, and queues its own forward pass; every rank runs the same path
(decode graph / piecewise graphs / eager) and meets the others in the collectives (all-reduce
after the row-parallel layers and the vocab-parallel embedding, all-gather of the logits). Only
the driver samples; with async scheduling it broadcasts the sampled ids over the process group,
on the device, so every rank gathers the next step's input ids without a host round trip. The
driver never waits for the workers beyond what the collectives impose.

Process group: NCCL on GPUs (rank r on cuda:r), gloo on CPU, over a TCP store on 127.0.0.1 (a
free port picked by binding port 0). NVLink multicast stays off in every process.

Failures: a monitor thread waits on the workers' process sentinels. When a worker dies, every
later call raises a RuntimeError naming the rank, its exit code and its error; with NCCL the
process group is aborted so that collectives in flight fail instead of spinning forever (and if
the driver is still stuck inside a call after a grace period, the process exits with a message:
never a silent hang). Workers exit when the driver's process goes away.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import threading
import time
import weakref
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from typing import Any

from pagedserve.config import EngineConfig
from pagedserve.distributed.parallel_state import (NO_MULTICAST_ENV, abort_distributed, backend_for, run_bounded,
                                                    destroy_distributed, disable_multicast_env, init_distributed)
from pagedserve.executor.base import describe_rank
from pagedserve.executor.rank_group import RankGroupExecutor, after_rank_death
from pagedserve.executor.tp_process import check_later_tp_engine, claim_process, release_process
from pagedserve.spawn import spawn_children

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = float(os.environ.get("PAGEDSERVE_TP_STARTUP_TIMEOUT_S", "600"))
# after a worker died: how long the driver may stay stuck inside an executor call before the
# process exits with the error (NCCL collectives that the abort did not release)
DEATH_GRACE_S = float(os.environ.get("PAGEDSERVE_TP_DEATH_GRACE_S", "30"))

@dataclass
class _Worker:
    rank: int
    proc: Any  # multiprocessing Process
    cmd: Any  # Connection, driver → worker
    resp: Any  # Connection, worker → driver
    error: str | None = None


@dataclass
class _Group:
    """Everything the monitor thread and the finalizer need (no reference to the executor)."""

    backend: str
    tp: int = 1
    pp: int = 1
    workers: list[_Worker] = field(default_factory=list)
    dead: _Worker | None = None
    failed: str | None = None  # an error escaped a call: the ranks may be out of lockstep
    busy: int = 0  # > 0 while the driver is inside an executor call
    raised: bool = False  # the driver has reported the failure to its caller
    closed: bool = False
    dist_up: bool = False
    rank0: Any = None  # rank 0's ModelRunner: its CUDA graphs are released before the teardown
    stop_r: Any = None
    stop_w: Any = None
    monitor: threading.Thread | None = None

    # -- failure reporting ------------------------------------------------------------------------
    def failure_message(self) -> str:
        w = self.dead
        if w is None:
            return "tensor-parallel executor failed"
        if w.error is None:
            try:
                while w.resp.poll(0.5):  # the worker's last words, if it had time to send them
                    msg = w.resp.recv()
                    if msg[0] == "error":
                        w.error = msg[1]
                        break
            except (EOFError, OSError):
                pass
        code = _exit_code(w.proc, 10)  # it exits right after its last words (slow on a loaded host)
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        msg = (f"{self.describe(w.rank)} (pid {w.proc.pid}) {how}; the engine cannot continue "
               "(restart it)")
        return msg + (f". Its error: {w.error.strip()}" if w.error else "")

    def describe(self, rank: int) -> str:
        return describe_rank(rank, self.tp, self.pp)

    def find_dead(self, timeout: float = 0.0) -> _Worker | None:
        if self.dead is None:
            sentinels = {w.proc.sentinel: w for w in self.workers if w.proc is not None}
            ready = mp_wait(list(sentinels), timeout) if sentinels else []
            if ready:
                self.dead = sentinels[ready[0]]
        return self.dead

    # -- monitor thread ---------------------------------------------------------------------------
    def start_monitor(self) -> None:
        self.stop_r, self.stop_w = mp.Pipe(duplex=False)
        self.monitor = threading.Thread(target=self._watch, name="tp-monitor", daemon=True)
        self.monitor.start()

    def _watch(self) -> None:
        sentinels = {w.proc.sentinel: w for w in self.workers}
        ready = mp_wait(list(sentinels) + [self.stop_r])
        if self.closed or self.stop_r in ready:
            return
        if self.dead is None:
            self.dead = sentinels[next(s for s in ready if s in sentinels)]
        w = self.dead
        logger.error("tensor-parallel worker rank %d (pid %d) exited with code %s", w.rank, w.proc.pid,
                     _exit_code(w.proc, 1))
        after_rank_death(self, DEATH_GRACE_S)  # (the NCCL abort can block: seen on 2 x H200)

    # -- shutdown -----------------------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.stop_w is not None:
            try:
                self.stop_w.send(None)
            except OSError:
                pass
        bye = pickle.dumps(("shutdown",))
        for w in self.workers:
            try:
                w.cmd.send_bytes(bye)
            except OSError:
                pass
        broken = self.dead is not None or self.failed is not None
        runner, self.rank0 = self.rank0, None
        if runner is not None and not broken:  # captured collectives pin the communicator: graphs first
            try:
                runner.release_cuda_graphs()
            except Exception:  # best effort: the group is torn down (or aborted) next either way
                logger.exception("tensor-parallel: releasing rank 0's CUDA graphs failed")
        if self.dist_up:  # bounded: NCCL's teardown can block for good (parallel_state.destroy_distributed)
            self.dist_up = False
            run_bounded(abort_distributed if broken else destroy_distributed, 2 if broken else 5,
                        "process group abort" if broken else "process group teardown")
        for w in self.workers:
            w.proc.join(2 if broken else 15)  # after a failure, ranks may be stuck in a collective
            if w.proc.is_alive():
                logger.warning("tensor-parallel worker rank %d did not exit: terminating it", w.rank)
                w.proc.terminate()
                w.proc.join(5)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(5)
            for c in (w.cmd, w.resp):
                try:
                    c.close()
                except OSError:
                    pass
        for c in (self.stop_r, self.stop_w):
            if c is not None:
                c.close()


class MultiprocExecutor(RankGroupExecutor):
    name = "tensor-parallel executor"
    dead_wait_s = 1.0

    def __init__(self, config: EngineConfig, use_tqdm: bool = True) -> None:
        import torch
        import torch.distributed as dist

        from pagedserve.executor.worker_proc import RankWorker, worker_main

        self.config = config
        self.tp_size = config.parallel_config.tensor_parallel_size
        self.pp_size = config.parallel_config.pipeline_parallel_size
        world = self.tp_size * self.pp_size  # global ranks (parallel_state.rank_layout)
        check_later_tp_engine(config.device)
        claim_process(self)
        disable_multicast_env()
        if config.device.startswith("cuda"):
            config.device = "cuda:0"
            torch.cuda.set_device(0)
        self._g = g = _Group(backend_for(config.device), self.tp_size, self.pp_size)
        self._finalizer = weakref.finalize(self, g.close)
        try:
            store = dist.TCPStore(HOST, 0, world, is_master=True, wait_for_workers=False,
                                  timeout=_timedelta(STARTUP_TIMEOUT_S))
            ctx = mp.get_context("spawn")
            log_level = logging.getLogger().getEffectiveLevel()
            with spawn_children():
                for rank in range(1, world):
                    cmd_r, cmd_w = ctx.Pipe(duplex=False)
                    resp_r, resp_w = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=worker_main, name=f"pagedserve-tp{rank}", daemon=True,
                                       args=(config, rank, world, HOST, store.port, cmd_r, resp_w,
                                             dict(NO_MULTICAST_ENV), log_level))
                    proc.start()
                    cmd_r.close()
                    resp_w.close()
                    g.workers.append(_Worker(rank, proc, cmd_w, resp_r))
            self._expect("hello")
            g.start_monitor()
            with self._call():
                init_distributed(config.device, 0, world, HOST, store.port, store=store,
                                 timeout_s=STARTUP_TIMEOUT_S)
                g.dist_up = True
                self.worker = RankWorker(config, 0, world, use_tqdm=use_tqdm)
                self.runner = g.rank0 = self.worker.runner
            self._expect("ready")
            logger.info("tensor parallelism %d x pipeline stages %d: %d ranks (%s), workers %s", self.tp_size,
                        self.pp_size, world, g.backend, [w.proc.pid for w in g.workers])
        except BaseException:
            self.shutdown()
            raise

    # -- plumbing -----------------------------------------------------------------------------------
    def _send(self, msg: tuple) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        for w in self._g.workers:
            w.cmd.send_bytes(data)

    def _recv(self, w: _Worker, kind: str, timeout: float | None = None) -> Any:
        ready = mp_wait([w.resp, w.proc.sentinel], timeout)
        if not ready:
            raise TimeoutError(f"tensor-parallel worker rank {w.rank} did not answer in {timeout:.0f} s")
        if w.resp in ready:
            try:
                msg = w.resp.recv()
            except EOFError:
                msg = None
            if msg is not None and msg[0] == kind:
                return msg[1] if len(msg) > 1 else None
            if msg is not None and msg[0] == "error":
                w.error = msg[1]
        self._g.dead = self._g.dead or w
        if w.proc.is_alive():
            w.proc.join(5)
        self._g.raised = True
        raise RuntimeError(self._g.failure_message())

    def _expect(self, kind: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        for w in self._g.workers:
            self._recv(w, kind, max(1.0, deadline - time.monotonic()))

    # -- the executor API ---------------------------------------------------------------------------
    def collective_rpc(self, method: str, *args: Any) -> list[Any]:
        with self._call():
            self._send(("rpc", method, args))
            local = getattr(self.worker, method)(*args)
            return [local] + [self._recv(w, "result") for w in self._g.workers]

    def _send_step(self, h: Any, block_ops: list) -> None:
        self._send(("step", h, block_ops))

    @property
    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._g.workers]

    def shutdown(self) -> None:
        """Stop the workers and leave the process group (idempotent; also runs when collected)."""
        self._finalizer()
        release_process(self)


def _exit_code(proc: Any, timeout: float) -> int | None:
    """The worker's exit code, waiting up to ``timeout`` s for it. Two threads reap the same process
    (the monitor and the caller that reports the failure): the one whose ``waitpid`` loses the race
    reads None until the winner has stored the code, so poll again rather than trust one join."""
    deadline = time.monotonic() + timeout
    proc.join(timeout)
    while proc.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc.exitcode


def _timedelta(seconds: float):
    import datetime

    return datetime.timedelta(seconds=seconds)
