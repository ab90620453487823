"""``--distributed-executor-backend ray``: tensor and pipeline parallelism over the nodes of a Ray
cluster (docs/pipeline_parallel.md, "Multi-node on Ray").

The driver (rank 0: tensor rank 0 of the last stage, with the scheduler and the sampler) stays in
the engine-core process, as with the mp executor; ranks 1..N-1 are Ray actors
(``ray_worker.RayRankWorker``) in a placement group (``ray_cluster``), ordered so that the driver's
node takes the lowest ranks (the last stage) and each further node a contiguous block of ranks
(whole stages where the sizes allow). Each actor runs the mp workers' code
(``worker_proc.start_rank``, ``RankWorker``) and joins torch.distributed (NCCL on GPUs, gloo on
CPU) over a TCP store on the driver's node IP and a free port. Steps and RPCs are actor calls;
activations and collectives go over torch.distributed exactly as with the mp executor.

Failures: every call's ObjectRef is kept until it completes; a monitor thread waits on them, and a
ref that fails (the actor died, its node died, or its method raised: that actor is then killed, so
that its peers' collectives fail instead of waiting for it) marks the rank dead: every
later call raises a RuntimeError naming the rank, its Ray actor, pid and node; with NCCL the process
group is aborted, and a driver still stuck in a collective after a grace period exits with the
message (never a silent hang). Shutdown kills the actors, removes the placement group and
disconnects from Ray if this executor connected.
"""
from __future__ import annotations

import logging
import os
import pickle
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from pagedserve.config import EngineConfig
from pagedserve.distributed.parallel_state import (NO_MULTICAST_ENV, abort_distributed, backend_for,
                                                    destroy_distributed, disable_multicast_env, init_distributed,
                                                    run_bounded)
from pagedserve.executor import ray_cluster
from pagedserve.executor.base import describe_rank
from pagedserve.executor.rank_group import RankGroupExecutor, after_rank_death
from pagedserve.executor.multiproc import DEATH_GRACE_S, STARTUP_TIMEOUT_S, _timedelta
from pagedserve.executor.tp_process import check_later_tp_engine, claim_process, release_process

logger = logging.getLogger(__name__)


@dataclass
class _Actor:
    rank: int
    handle: Any
    pid: int = 0
    node_id: str = ""
    ip: str = ""
    gpu_ids: list[str] = field(default_factory=list)


@dataclass
class _RayGroup:
    """What the monitor thread and the finalizer need (no reference to the executor)."""

    backend: str
    tp: int
    pp: int
    actors: list[_Actor] = field(default_factory=list)
    pending: dict[Any, int] = field(default_factory=dict)  # ObjectRef of a call in flight → rank
    lock: threading.Lock = field(default_factory=threading.Lock)
    dead: int | None = None  # the first rank found dead
    dead_error: str = ""
    failed: str | None = None
    busy: int = 0
    raised: bool = False
    closed: bool = False
    dist_up: bool = False
    pg: Any = None
    owns_ray: bool = False
    monitor: threading.Thread | None = None

    # -- calls ------------------------------------------------------------------------------------
    def track(self, rank: int, ref: Any) -> Any:
        with self.lock:
            self.pending[ref] = rank
        return ref

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        """A call's result; its failure marks the rank dead and raises the executor's error."""
        ray = ray_cluster.import_ray()
        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"{self.describe(self.pending.get(ref, -1))} did not answer in {timeout:.0f} s")
        except ray.exceptions.RayError as e:
            self.mark_dead(self.pending.get(ref, -1), e)
            self.raised = True
            raise RuntimeError(self.failure_message()) from None
        finally:
            with self.lock:
                self.pending.pop(ref, None)

    def find_dead(self, timeout: float = 0.0) -> int | None:
        return self.poll(timeout)

    def poll(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s on the calls in flight; drop the finished ones, and return the
        dead rank if one failed."""
        ray = ray_cluster.import_ray()
        with self.lock:
            refs = list(self.pending)
        if self.dead is None and refs:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)
            for ref in ready:
                try:
                    ray.get(ref, timeout=0)
                except ray.exceptions.RayError as e:
                    self.mark_dead(self.pending.get(ref, -1), e)
                except Exception:  # noqa: BLE001 — a result that cannot be read here: the caller reads it
                    continue
                with self.lock:
                    self.pending.pop(ref, None)
        elif timeout:
            time.sleep(timeout)
        return self.dead

    def mark_dead(self, rank: int, e: BaseException) -> None:
        if self.dead is None:
            self.dead, self.dead_error = rank, _first_lines(str(e))

    # -- failure reporting ------------------------------------------------------------------------
    def describe(self, rank: int) -> str:
        return describe_rank(rank, self.tp, self.pp)

    def failure_message(self) -> str:
        if self.dead is None:
            return "the Ray executor failed"
        a = next((a for a in self.actors if a.rank == self.dead), None)
        where = f" (Ray actor {a.handle._actor_id.hex()}, pid {a.pid}, node {a.ip})" if a is not None else ""
        return (f"{self.describe(self.dead)}{where} failed; the engine cannot continue (restart it). "
                f"Ray: {self.dead_error}")

    # -- monitor thread ---------------------------------------------------------------------------
    def start_monitor(self) -> None:
        self.monitor = threading.Thread(target=self._watch, name="ray-monitor", daemon=True)
        self.monitor.start()

    def _watch(self) -> None:
        while not self.closed and self.poll(0.5) is None:
            pass
        if self.closed:
            return
        logger.error("%s", self.failure_message())
        self._kill_rank(self.dead)  # a rank whose method raised is still alive: its peers must see it go
        after_rank_death(self, DEATH_GRACE_S)

    def _kill_rank(self, rank: int | None) -> None:
        ray = ray_cluster.import_ray()
        for a in self.actors:
            if a.rank == rank:
                try:
                    ray.kill(a.handle, no_restart=True)
                except Exception:  # noqa: BLE001 — already gone
                    pass

    # -- shutdown -----------------------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        ray = ray_cluster.import_ray()
        broken = self.dead is not None or self.failed is not None
        if self.actors and not broken and ray.is_initialized():  # gloo ranks leave their group first
            stops = [a.handle.stop.remote() for a in self.actors]
            try:
                ray.wait(stops, num_returns=len(stops), timeout=10)
            except Exception:  # noqa: BLE001 — best effort: the actors are killed next either way
                pass
        if self.dist_up:
            self.dist_up = False
            run_bounded(abort_distributed if broken else destroy_distributed, 2 if broken else 5,
                        "process group abort" if broken else "process group teardown")
        if ray.is_initialized():
            for a in self.actors:
                try:
                    ray.kill(a.handle, no_restart=True)
                except Exception:  # noqa: BLE001 — already gone
                    pass
            if self.pg is not None:
                try:
                    ray_cluster.remove(self.pg)
                except Exception:  # noqa: BLE001
                    logger.exception("Ray: removing the placement group failed")
        self.actors.clear()
        self.pending.clear()
        self.pg = None
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()


class RayExecutor(RankGroupExecutor):
    name = "Ray executor"
    dead_wait_s = 3.0

    def __init__(self, config: EngineConfig, use_tqdm: bool = True) -> None:
        ray = ray_cluster.import_ray()
        import torch
        import torch.distributed as dist
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from pagedserve.executor.worker_proc import RankWorker
        from pagedserve.executor.ray_worker import RayRankWorker

        self.config = config
        self.tp_size = config.parallel_config.tensor_parallel_size
        self.pp_size = config.parallel_config.pipeline_parallel_size
        world = self.tp_size * self.pp_size
        gpu = config.device.startswith("cuda")
        check_later_tp_engine(config.device)
        claim_process(self)
        disable_multicast_env()
        self._g = g = _RayGroup(backend_for(config.device), self.tp_size, self.pp_size)
        self._finalizer = weakref.finalize(self, g.close)
        try:
            g.owns_ray = ray_cluster.connect(num_cpus=None if gpu else max(world, os.cpu_count() or 1))
            node_id = ray.get_runtime_context().get_node_id()
            host = ray.util.get_node_ip_address()
            g.pg = ray_cluster.make_placement_group(world, gpu, node_id)
            actor_cls = ray.remote(RayRankWorker)
            res = dict(num_cpus=0, num_gpus=1) if gpu else dict(num_cpus=1, num_gpus=0)

            def place(bundle: int, cls: Any = actor_cls) -> Any:
                return cls.options(**res, max_restarts=0, scheduling_strategy=PlacementGroupSchedulingStrategy(
                    g.pg, placement_group_bundle_index=bundle)).remote(dict(NO_MULTICAST_ENV))

            if gpu:  # the driver's GPU: the one Ray gave bundle 0 (a short-lived actor asks)
                probe = place(0)
                gpu_ids = ray.get(probe.where.remote(), timeout=STARTUP_TIMEOUT_S)["gpu_ids"]
                ray.kill(probe, no_restart=True)
                config.device = f"cuda:{_visible_index(gpu_ids[0])}"
                torch.cuda.set_device(torch.device(config.device))
            handles = [place(b) for b in range(1, world)]
            found = ray.get([h.where.remote() for h in handles], timeout=STARTUP_TIMEOUT_S)
            # the driver's node first (its ranks are the last stage's), then node by node
            order = sorted(range(len(handles)), key=lambda i: (found[i]["node_id"] != node_id, found[i]["node_id"],
                                                               found[i]["gpu_ids"]))
            for rank, i in enumerate(order, start=1):
                f = found[i]
                g.actors.append(_Actor(rank, handles[i], f["pid"], f["node_id"], f["ip"], f["gpu_ids"]))
            store = dist.TCPStore(host, 0, world, is_master=True, wait_for_workers=False,
                                  timeout=_timedelta(STARTUP_TIMEOUT_S))
            log_level = logging.getLogger().getEffectiveLevel()
            starts = [g.track(a.rank, a.handle.start.remote(config, a.rank, world, host, store.port, log_level))
                      for a in g.actors]
            g.start_monitor()
            with self._call():
                init_distributed(config.device, 0, world, host, store.port, store=store, timeout_s=STARTUP_TIMEOUT_S)
                g.dist_up = True
                self.worker = RankWorker(config, 0, world, use_tqdm=use_tqdm)
                self.runner = self.worker.runner
                for ref in starts:
                    g.get(ref, timeout=STARTUP_TIMEOUT_S)
            logger.info("Ray: tensor parallelism %d x pipeline stages %d: %d ranks (%s) on %d node(s); actors: %s",
                        self.tp_size, self.pp_size, world, g.backend, len({node_id} | {a.node_id for a in g.actors}),
                        [(a.rank, a.ip, a.pid) for a in g.actors])
        except BaseException:
            self.shutdown()
            raise

    # -- plumbing -----------------------------------------------------------------------------------
    def _send_step(self, h: Any, block_ops: list) -> None:
        """Pickled once for every actor, as the mp executor does (and unpickled into writable
        arrays: Ray's zero-copy numpy arguments would be read-only)."""
        data = pickle.dumps((h, block_ops), protocol=pickle.HIGHEST_PROTOCOL)
        for a in self._g.actors:
            self._g.track(a.rank, a.handle.execute_step.remote(data))

    # -- the executor API (the mp executor's, over actor calls) -------------------------------------
    def collective_rpc(self, method: str, *args: Any) -> list[Any]:
        with self._call():
            refs = [self._g.track(a.rank, a.handle.rpc.remote(method, args)) for a in self._g.actors]
            local = getattr(self.worker, method)(*args)
            return [local] + [self._g.get(r) for r in refs]

    @property
    def worker_pids(self) -> list[int]:
        return [a.pid for a in self._g.actors]

    @property
    def actors(self) -> list[_Actor]:
        return list(self._g.actors)

    def shutdown(self) -> None:
        """Kill the actors, remove the placement group, leave the process group (idempotent)."""
        self.worker = self.runner = None  # type: ignore[assignment]
        self._finalizer()
        release_process(self)


def _visible_index(gpu_id: str) -> int:
    """The CUDA index in this process of the GPU Ray calls ``gpu_id``."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible.index(gpu_id) if gpu_id in visible else int(gpu_id)


def _first_lines(text: str, n: int = 6) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines()[:n] if line.strip())
