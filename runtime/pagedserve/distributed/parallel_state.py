"""Tensor-parallel state: rank, size, the process group and the collectives the layers need.

``get_tp_rank`` / ``get_tp_size`` are read while a model is *built* (each sharded layer keeps its
own rank and size); :func:`tp_context` sets them around the construction only, so a process can
also hold an unsharded model (their layers never call a collective). The collectives run on the
default ``torch.distributed`` group: NCCL on GPUs, gloo on CPU (``executor/multiproc.py`` sets it
up: one process per rank, rank 0 in the engine-core process).
"""
from __future__ import annotations

import datetime
import logging
import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

_TP_RANK = 0
_TP_SIZE = 1
_PP_RANK = 0
_PP_SIZE = 1
_TP_GROUP: Any = None  # the process group of this rank's tensor-parallel peers (None: the default group)

# NVLink multicast (NVLS) stays off on the device machines: set in every process of a TP group
# (the driver before its NCCL communicator exists, the workers before they import torch's NCCL).
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def init_tensor_parallel(rank: int, size: int) -> None:
    global _TP_RANK, _TP_SIZE
    _TP_RANK, _TP_SIZE = rank, size


@contextmanager
def tp_context(rank: int, size: int) -> Iterator[None]:
    """Rank and size seen by the layers built inside the block (restored after it)."""
    prev = (_TP_RANK, _TP_SIZE)
    init_tensor_parallel(rank, size)
    try:
        yield
    finally:
        init_tensor_parallel(*prev)


def get_tp_rank() -> int:
    return _TP_RANK


def get_tp_size() -> int:
    return _TP_SIZE


# -- pipeline parallelism -----------------------------------------------------------------------
# Global ranks: ``world = tp * pp``; rank ``g`` is tensor rank ``g % tp`` of pipeline stage
# ``pp - 1 - g // tp``. The driver (global rank 0, in the engine-core process) is therefore tensor
# rank 0 of the LAST stage: the stage that computes the logits samples where the scheduler lives.
@contextmanager
def pp_context(rank: int, size: int) -> Iterator[None]:
    """Pipeline stage and number of stages seen by the models built inside the block."""
    global _PP_RANK, _PP_SIZE
    prev = (_PP_RANK, _PP_SIZE)
    _PP_RANK, _PP_SIZE = rank, size
    try:
        yield
    finally:
        _PP_RANK, _PP_SIZE = prev


def get_pp_rank() -> int:
    return _PP_RANK


def get_pp_size() -> int:
    return _PP_SIZE


def rank_layout(global_rank: int, tp: int, pp: int) -> tuple[int, int]:
    """(tensor rank, pipeline stage) of a global rank."""
    return global_rank % tp, pp - 1 - global_rank // tp


def global_rank_of(tp_rank: int, pp_rank: int, tp: int, pp: int) -> int:
    return (pp - 1 - pp_rank) * tp + tp_rank


def stage_layers(num_layers: int, pp_rank: int, pp_size: int) -> tuple[int, int]:
    """[start, end) of the decoder layers of stage ``pp_rank``: an even split, the earlier stages
    taking one more layer when it does not divide (the last stage also runs the LM head)."""
    base, extra = divmod(num_layers, pp_size)
    start = pp_rank * base + min(pp_rank, extra)
    return start, start + base + (1 if pp_rank < extra else 0)


def init_model_parallel_groups(tp: int, pp: int) -> None:
    """With pipeline stages, each stage's tensor ranks get their own group for the layers'
    collectives (every rank creates every group, in the same order, as torch.distributed wants)."""
    global _TP_GROUP
    _TP_GROUP = None
    if pp == 1:
        return
    me = dist.get_rank()
    for stage in range(pp):
        ranks = [global_rank_of(t, stage, tp, pp) for t in range(tp)]
        group = dist.new_group(ranks)
        if me in ranks:
            _TP_GROUP = group


def pp_send(tensors: list[torch.Tensor], dst: int) -> None:
    """Send the stage's activations to global rank ``dst`` (the same tensor rank of the next stage)."""
    for t in tensors:
        dist.send(t.contiguous(), dst)


def pp_recv(shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device, src: int) -> list[torch.Tensor]:
    out = []
    for shape in shapes:
        t = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(t, src)
        out.append(t)
    return out


def disable_multicast_env() -> None:
    os.environ.update(NO_MULTICAST_ENV)


# NCCL settings applied unless the user set them. NCCL_GRAPH_REGISTER=0: NCCL does not register the
# buffers of collectives captured in CUDA graphs. With registration on (NCCL's default), a TP=2
# engine created after another engine in the same process stalled for good on 2 x H200 (runs 7,
# 10, 17-19, and twice more in run 25); with it off, or with NCCL_CUMEM_ENABLE=0, or without the
# allocator's expandable segments, the same sequence completes at the same speed (runs 24-25; with
# this default applied here, run 26): the registration appears to keep stale mappings of memory
# that the earlier engine freed.
NCCL_DEFAULT_ENV = {"NCCL_GRAPH_REGISTER": "0"}


def nccl_env_defaults() -> None:
    """Before a process's first NCCL communicator (NCCL reads its settings once per process)."""
    for k, v in NCCL_DEFAULT_ENV.items():
        os.environ.setdefault(k, v)


# -- process group ------------------------------------------------------------------------------
def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def init_distributed(device: str, rank: int, size: int, host: str, port: int, store: Any = None,
                     timeout_s: float = 600.0) -> None:
    """Join the group over a TCP store at ``tcp://host:port`` (rank 0 passes the store it created)."""
    if any(t.is_alive() for t in _HUNG):
        # an earlier group's teardown still blocks inside NCCL: a new group's collectives stalled
        # behind it on the H200 (runs 7, 10, 17), so refuse instead of hanging later
        raise RuntimeError("this process still runs the hung NCCL teardown of an earlier tensor-parallel engine "
                           "(pytorch/pytorch#115388): a new group would stall behind it. Start the new engine in "
                           "a new process, or run with enforce_eager=True")
    if dist.is_initialized():
        raise RuntimeError("this process still holds the process group of an earlier tensor-parallel engine: "
                           "its NCCL teardown did not finish (PyTorch cannot tear a group down once CUDA graphs "
                           "captured its collectives, pytorch/pytorch#115388). Start the new engine in a new "
                           "process, or run with enforce_eager=True")
    disable_multicast_env()
    if device.startswith("cuda"):
        nccl_env_defaults()
    timeout = datetime.timedelta(seconds=timeout_s)
    if store is None:
        store = dist.TCPStore(host, port, size, is_master=False, timeout=timeout)
    # on GPUs, bind the group to this rank's device: the NCCL communicator is created now (its
    # buffers are then outside torch's allocator when the KV budget is profiled)
    device_id = torch.device(device) if device.startswith("cuda") else None
    dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=size, timeout=timeout,
                            device_id=device_id)


def destroy_distributed() -> None:
    """Leave the group. With NCCL this can block for good: PyTorch's teardown hangs once collectives
    were captured in CUDA graphs (pytorch/pytorch#115388; seen on 2 x H200, torch 2.11, NCCL 2.28), so
    callers run it in a daemon thread with a bounded wait (executor/multiproc.py), and worker
    processes skip it and exit (the OS releases their communicators)."""
    global _TP_GROUP
    _TP_GROUP = None
    if dist.is_initialized():
        dist.destroy_process_group()


def uses_nccl() -> bool:
    return dist.is_initialized() and dist.get_backend() == "nccl"


def run_bounded(fn: Any, seconds: float, what: str) -> bool:
    """Run ``fn`` in a daemon thread and wait at most ``seconds``; False (and a warning) if it is
    still running then: a teardown that waits on a peer must not hang its caller."""
    t = threading.Thread(target=fn, name=f"tp-{what}", daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        logger.warning("tensor-parallel: %s did not finish in %.0f s; going on without it", what, seconds)
        _HUNG.append(t)
        return False
    return True


#: teardown threads that did not finish (run_bounded): while one is alive no new group may start
_HUNG: list[threading.Thread] = []


def abort_distributed() -> None:
    """Tear the group down without waiting for the peers (one of them died): pending NCCL
    collectives fail instead of spinning forever."""
    global _TP_GROUP
    _TP_GROUP = None
    if not dist.is_initialized():
        return
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    try:
        if abort is not None and dist.get_backend() == "nccl":
            abort()
        else:
            dist.destroy_process_group()
    except Exception:  # best effort: the process is going away or the engine is failed anyway
        pass


# -- collectives (called by sharded layers only, i.e. when their tp_size > 1) --------------------
def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(x, group=_TP_GROUP)
    return x


def tp_all_gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """[..., n] on each rank → [..., size * n], rank-major along the last dimension."""
    size = dist.get_world_size(_TP_GROUP)
    out = torch.empty((size * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    _all_gather_single(out, x.contiguous(), group=_TP_GROUP)  # rank-major along dim 0
    return out.view(size, *x.shape).movedim(0, -2).reshape(*x.shape[:-1], size * x.shape[-1])


_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # torch >= 2.13 renamed it


def tp_broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """From global rank ``src`` (the driver) to its tensor-parallel peers."""
    dist.broadcast(x, src, group=_TP_GROUP)
    return x


def tp_min_int(n: int, device: torch.device | str) -> int:
    t = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


# -- validation -----------------------------------------------------------------------------------
def check_pipeline_parallel(arch: Any, pp: int) -> None:
    """Every stage needs at least one decoder layer."""
    if pp < 1:
        raise ValueError(f"pipeline_parallel_size must be >= 1, got {pp}")
    if pp > arch.num_layers:
        raise ValueError(f"pipeline_parallel_size {pp} is larger than the model's num_hidden_layers "
                         f"{arch.num_layers}: every pipeline stage needs at least one layer")


def check_tensor_parallel(arch: Any, tp: int) -> None:
    """Clear errors before any process starts: what must divide by the number of ranks."""
    if tp == 1:
        return
    if arch.num_heads % tp:
        raise ValueError(f"tensor_parallel_size {tp} must divide num_attention_heads {arch.num_heads}")
    kv = arch.num_kv_heads
    if kv >= tp and kv % tp:
        raise ValueError(f"tensor_parallel_size {tp} must divide num_key_value_heads {kv} "
                         "(or be a multiple of it: KV heads are then replicated)")
    if kv < tp and tp % kv:
        raise ValueError(f"tensor_parallel_size {tp} must be a multiple of num_key_value_heads {kv} "
                         "when it is larger (each KV head is replicated on tp / kv ranks)")
    if arch.intermediate_size % tp:
        raise ValueError(f"tensor_parallel_size {tp} must divide intermediate_size {arch.intermediate_size}")
    moe = getattr(arch, "moe", None)
    if moe is not None:  # each expert's (and the shared expert's) intermediate dimension is sharded
        for key in ("moe_intermediate_size", "shared_expert_intermediate_size"):
            if getattr(moe, key) % tp:
                raise ValueError(f"tensor_parallel_size {tp} must divide {key} {getattr(moe, key)}")
