"""One tensor-parallel rank: :class:`RankWorker` (its model runner and the start-up steps every
rank runs in lockstep), :func:`start_rank` (what ranks 1..N-1 run first, also in the Ray
executor's actors: ``executor/ray_worker.py``) and :func:`worker_main`, the loop of ranks 1..N-1
of the mp executor, each in its own process.

Messages from the driver (rank 0, in the engine-core process), one pickled message each over a
pipe per worker::

    ("step", HostInput | None, block_ops)    run the step's block ops and forward pass (no sampling)
    ("rpc", method, args)                     RankWorker.<method>(*args); the result goes back
    ("shutdown",)

Replies on a second pipe: ``("hello", pid)`` once imported, ``("ready",)`` once the model is
built, ``("result", value)`` per rpc, ``("error", traceback)`` before a worker exits on an error.
A worker exits when the driver's process goes away (a watchdog thread waits on it), so no rank
outlives the engine even when the driver is killed.
"""
from __future__ import annotations

import logging
import os
import pickle
import threading
import traceback
from typing import Any

from pagedserve.config import EngineConfig

logger = logging.getLogger(__name__)


class RankWorker:
    def __init__(self, config: EngineConfig, rank: int, size: int, use_tqdm: bool = True) -> None:
        from pagedserve.distributed.parallel_state import (init_model_parallel_groups, pp_context, rank_layout,
                                                            tp_context)
        from pagedserve.worker.model_runner import ModelRunner

        self.rank, self.size = rank, size
        tp, pp = config.parallel_config.tensor_parallel_size, config.parallel_config.pipeline_parallel_size
        self.tp_rank, self.pp_rank = rank_layout(rank, tp, pp)  # global rank → (tensor rank, stage)
        if size > 1:
            init_model_parallel_groups(tp, pp)  # each stage's tensor ranks: their own group
        # the layers read rank and size while they are built; the model its pipeline stage
        with tp_context(self.tp_rank, tp), pp_context(self.pp_rank, pp):
            self.runner = ModelRunner(config, use_tqdm=use_tqdm)
        self.prev = None  # this rank's handle of the last step (its copy of the sampled ids)
        self.num_steps = 0

    # -- start-up (every rank, same order) --------------------------------------------------------
    def determine_num_blocks(self) -> int:
        """This rank's budget (each rank profiles its own GPU), then the minimum over ranks."""
        if self.size == 1:
            return self.runner.determine_num_blocks()
        from pagedserve.distributed.parallel_state import tp_min_int

        error = None
        try:
            n = self.runner.determine_num_blocks()
        except ValueError as e:  # still join the collective: the other ranks wait in it
            n, error = 0, e
        n = tp_min_int(n, self.runner.device)
        if n < 1:
            raise error or ValueError("no memory left for the KV cache on another tensor-parallel rank")
        return n

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.runner.initialize_kv_cache(num_blocks)

    def capture_cuda_graphs(self) -> float:
        return self.runner.capture_cuda_graphs()

    def init_block_ops(self, num_cpu_blocks: int) -> None:
        from pagedserve.worker.block_ops import BlockOps

        self.runner.block_ops = BlockOps(self.runner.kv_cache, num_cpu_blocks)  # CoW copies and swaps

    def use_eager_piecewise(self, max_tokens: int) -> None:
        """Tests on CPU: the piecewise-graph path with its pieces run eagerly."""
        from pagedserve.worker.piecewise_graphs import PiecewiseCUDAGraphs

        self.runner.piecewise = PiecewiseCUDAGraphs(self.runner, max_tokens, use_graphs=False)

    def weight_checksum(self) -> float:
        """Sum of this rank's parameters (tests: each rank holds its own shard)."""
        return float(sum(p.double().sum().item() for p in self.runner.model.parameters()))

    def info(self) -> dict[str, Any]:
        import torch

        r = self.runner
        return {"rank": self.rank, "tp_rank": self.tp_rank, "pp_rank": self.pp_rank, "layers": list(r.layer_range),
                "pid": os.getpid(), "device": str(r.device), "num_steps": self.num_steps,
                "weight_bytes": sum(p.numel() * p.element_size() for p in r.model.parameters()),
                "kv_cache_shape": list(r.kv_cache.shape) if r.kv_cache is not None else None,
                "memory_allocated": torch.cuda.memory_allocated() if r.device.type == "cuda" else None}

    def bench_all_reduce(self, numels: list[int], iters: int = 100) -> dict[str, dict[int, float]]:
        """Median microseconds of one all-reduce of ``numels`` elements (model dtype) on this group:
        eager (what a launch costs on the host and device) and inside a CUDA graph (what a decode
        step pays). All ranks must call it together."""
        import statistics
        import time

        import torch
        import torch.distributed as dist

        dev, dtype = self.runner.device, self.runner.mc.dtype
        cuda = dev.type == "cuda"
        eager: dict[int, float] = {}
        graph: dict[int, float] = {}
        for n in numels:
            x = torch.ones(n, dtype=dtype, device=dev)
            for _ in range(5):
                dist.all_reduce(x)
            samples = []
            for _ in range(5):
                if cuda:
                    torch.cuda.synchronize()
                dist.barrier()
                t0 = time.perf_counter()
                for _ in range(iters):
                    dist.all_reduce(x)
                if cuda:
                    torch.cuda.synchronize()
                samples.append((time.perf_counter() - t0) / iters * 1e6)
            eager[n] = statistics.median(samples)
            if cuda:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    for _ in range(iters):
                        dist.all_reduce(x)
                g.replay()
                torch.cuda.synchronize()
                times = []
                for _ in range(5):
                    dist.barrier()
                    torch.cuda.synchronize()
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record()
                    g.replay()
                    e.record()
                    e.synchronize()
                    times.append(s.elapsed_time(e) * 1e3 / iters)
                graph[n] = statistics.median(times)
                del g
        return {"eager_us": eager, "graph_us": graph}

    # -- LoRA adapters: every rank reads its own shard ---------------------------------------------
    def add_lora(self, lora_request: Any) -> bool:
        return self.runner.add_lora(lora_request)

    def remove_lora(self, lora_id: int) -> bool:
        return self.runner.remove_lora(lora_id)

    def list_loras_of_rank(self) -> list[int]:
        """The adapters this rank holds (CPU cache or slot; tests)."""
        return self.runner.list_loras()

    # -- steps (ranks 1..N-1; the driver runs ModelRunner.launch_inputs with its scheduler output) --
    def execute_step(self, h: Any, block_ops: list) -> None:
        self.prev = self.runner.launch_inputs(h, block_ops, self.prev, None)
        self.num_steps += 1


def start_rank(config: EngineConfig, rank: int, size: int, host: str, port: int, device: str,
               num_threads: int | None = None) -> RankWorker:
    """What every rank but the driver runs before taking steps, whoever started it (a process of
    the mp executor, an actor of the Ray executor): bind the device, join the process group over the
    driver's TCP store at ``host:port``, build the rank's model."""
    import torch

    from pagedserve.distributed.parallel_state import init_distributed
    from pagedserve.utils import thread_lock_for_tqdm

    thread_lock_for_tqdm()
    config.device = device
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    elif num_threads is not None:
        torch.set_num_threads(num_threads)
    init_distributed(config.device, rank, size, host, port)
    return RankWorker(config, rank, size, use_tqdm=False)


def _exit_with_parent() -> None:
    """Exit as soon as the driver's process is gone (also when this rank is stuck in a collective)."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(3)

    threading.Thread(target=watch, name="tp-parent-watchdog", daemon=True).start()


def worker_main(config: EngineConfig, rank: int, size: int, host: str, port: int, cmd: Any, resp: Any,
                env: dict[str, str], log_level: int = logging.WARNING) -> None:
    """Entry point of ranks 1..N-1 (multiprocessing 'spawn')."""
    os.environ.update(env)  # NVLink multicast off (NCCL_NVLS_ENABLE=0, ...) before NCCL loads
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when ranks stop
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s %(name)s [tp rank {rank}]: %(message)s")
    _exit_with_parent()
    dump_s = float(os.environ.get("PAGEDSERVE_DEBUG_STACKS_S") or 0)
    if dump_s > 0:  # debugging a stall: every rank prints its Python stacks to stderr periodically
        import faulthandler

        faulthandler.dump_traceback_later(dump_s, repeat=True)
    code = 0
    try:
        from pagedserve.distributed.parallel_state import destroy_distributed, uses_nccl

        resp.send(("hello", os.getpid()))
        cuda = config.device.startswith("cuda")
        worker = start_rank(config, rank, size, host, port, f"cuda:{rank}" if cuda else "cpu",
                            None if cuda else max(1, (os.cpu_count() or 1) // size))
        resp.send(("ready",))
        while True:
            try:
                msg = pickle.loads(cmd.recv_bytes())
            except EOFError:  # the driver closed its end: the engine is gone
                break
            kind = msg[0]
            if kind == "step":
                worker.execute_step(msg[1], msg[2])
            elif kind == "rpc":
                resp.send(("result", getattr(worker, msg[1])(*msg[2])))
            elif kind == "shutdown":
                break
            else:
                raise RuntimeError(f"unknown message {kind!r}")
        if not uses_nccl():  # NCCL: exit without the teardown that can hang (parallel_state); the OS frees it
            destroy_distributed()
    except BaseException as e:  # noqa: BLE001 — reported to the driver, then exit
        code = 1
        logger.error("tensor-parallel rank %d failed: %s", rank, e)
        try:
            resp.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=12)}"))
        except OSError:
            pass
    finally:
        logging.shutdown()
    os._exit(code)  # skip interpreter teardown (CUDA context, NCCL)
