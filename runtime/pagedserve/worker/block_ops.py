"""KV block operations the scheduler asks for, run by the model runner before a forward pass:
copy-on-write block copies (GPU → GPU) and swaps between the GPU cache and a CPU block pool.

The scheduler's op list is sequential (``core/kv_cache_manager.py``): each op sees the cache as
the ops before it left it. Runs of same-kind ops are batched into one indexed copy when that keeps
the sequential meaning (no op in a batch reads or rewrites a block an earlier op of the batch wrote).

* A copy is one gather + scatter over every layer: ``kv[:, :, dst] = kv[:, :, src]`` on the KV tensor
  ``[layers, 2, blocks, block_size, kv_heads, head_dim]``.
* The CPU pool is ``[cpu_blocks, layers, 2, block_size, kv_heads, head_dim]`` (one block contiguous;
  pinned on CUDA). A swap stages the blocks contiguously on the GPU and moves runs of consecutive
  CPU blocks with one asynchronous copy each, on a side stream; the compute stream waits on it
  before the forward pass.
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

_MAX_STAGED_BLOCKS = 64  # bounds the temporary GPU buffer of one swap batch


class BlockOps:
    def __init__(self, kv_cache: torch.Tensor, num_cpu_blocks: int = 0) -> None:
        if kv_cache.element_size() == 1:  # an fp8 cache moves as bytes (index_copy has no fp8 kernels)
            kv_cache = kv_cache.view(torch.uint8)
        self.kv = kv_cache
        self.device = kv_cache.device
        layers, two, _, bs, heads, dim = kv_cache.shape
        self.block_shape = (layers, two, bs, heads, dim)
        self.cpu: torch.Tensor | None = None
        if num_cpu_blocks > 0:
            pin = self.device.type == "cuda"
            self.cpu = torch.empty((num_cpu_blocks, *self.block_shape), dtype=kv_cache.dtype, pin_memory=pin)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.num_ops = 0

    @property
    def num_cpu_blocks(self) -> int:
        return 0 if self.cpu is None else self.cpu.shape[0]

    # -- the op list --------------------------------------------------------------------------
    def apply(self, ops: list[tuple[str, int, int]]) -> None:
        for kind, pairs in _batches(ops):
            if kind == "copy":
                self.copy_blocks(pairs)
            elif kind == "swap_out":
                self.swap_out(pairs)
            elif kind == "swap_in":
                self.swap_in(pairs)
            else:
                raise ValueError(f"unknown block op {kind!r}")
        self.num_ops += len(ops)

    def _idx(self, ids: list[int]) -> torch.Tensor:
        t = torch.tensor(ids, dtype=torch.int64)
        return t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else t

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        src = self._idx([s for s, _ in pairs])
        dst = self._idx([d for _, d in pairs])
        self.kv.index_copy_(2, dst, self.kv.index_select(2, src))

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """GPU block → CPU block for each (gpu, cpu) pair."""
        assert self.cpu is not None, "swap_out without a CPU block pool (swap_space = 0?)"
        pairs = sorted(pairs, key=lambda p: p[1])
        for chunk in _chunks(pairs, _MAX_STAGED_BLOCKS):
            with self._side():
                staged = self.kv.index_select(2, self._idx([g for g, _ in chunk]))  # [L, 2, m, ...]
                staged = staged.permute(2, 0, 1, 3, 4, 5).contiguous()  # [m, L, 2, ...]
                for i0, i1, c0 in _runs([c for _, c in chunk]):
                    self.cpu[c0:c0 + i1 - i0].copy_(staged[i0:i1], non_blocking=True)
            self._join()

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """CPU block → GPU block for each (cpu, gpu) pair."""
        assert self.cpu is not None, "swap_in without a CPU block pool"
        pairs = sorted(pairs, key=lambda p: p[0])
        for chunk in _chunks(pairs, _MAX_STAGED_BLOCKS):
            with self._side():
                staged = torch.empty((len(chunk), *self.block_shape), dtype=self.kv.dtype, device=self.device)
                for i0, i1, c0 in _runs([c for c, _ in chunk]):
                    staged[i0:i1].copy_(self.cpu[c0:c0 + i1 - i0], non_blocking=True)
                self.kv.index_copy_(2, self._idx([g for _, g in chunk]), staged.permute(1, 2, 0, 3, 4, 5))
            self._join()

    # -- streams ------------------------------------------------------------------------------
    def _side(self):
        if self.stream is None:
            return _NullContext()
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # after the work queued so far
        return torch.cuda.stream(self.stream)

    def _join(self) -> None:
        if self.stream is not None:  # the forward pass (and later ops) wait for the copies
            torch.cuda.current_stream(self.device).wait_stream(self.stream)


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _batches(ops: list[tuple[str, int, int]]) -> list[tuple[str, list[tuple[int, int]]]]:
    """Group consecutive ops of one kind, starting a new group when an op reads or writes a block
    that an earlier op of the group wrote (so one batched copy equals running them in order)."""
    out: list[tuple[str, list[tuple[int, int]]]] = []
    written: set[int] = set()
    for kind, src, dst in ops:
        if not out or out[-1][0] != kind or src in written or dst in written:
            out.append((kind, []))
            written = set()
        out[-1][1].append((src, dst))
        written.add(dst)
    return out


def _chunks(pairs: list[tuple[int, int]], size: int) -> list[list[tuple[int, int]]]:
    return [pairs[i:i + size] for i in range(0, len(pairs), size)]


def _runs(ids: list[int]) -> list[tuple[int, int, int]]:
    """Runs of consecutive ids: (first index, end index, first id)."""
    runs = []
    i = 0
    while i < len(ids):
        j = i + 1
        while j < len(ids) and ids[j] == ids[j - 1] + 1:
            j += 1
        runs.append((i, j, ids[i]))
        i = j
    return runs
