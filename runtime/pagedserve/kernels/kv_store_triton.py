"""Triton KV-cache write by slot mapping (the reference is ``kv_store.store_kv_ref``).

Grid ``(num_tokens,)``: one program copies one token's K and V rows (all KV heads, ``KVH * D``
elements each) to ``cache[slot // block_size, slot % block_size]``; ``slot < 0`` is a padding
token and is skipped. Inputs may be strided views (e.g. the k/v slices of a fused qkv output);
the cache may be any view with a unit last stride (e.g. one layer of the engine's big cache).
CUDA-graph safe: grid = number of tokens (a shape), no host syncs. An fp8 cache
(``--kv-cache-dtype fp8``) gets the values clamped to its finite range, then rounded (scale 1).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.kernels.kv_store import fp8_limit
from pagedserve.kernels.utils import next_pow2


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_cb, stride_cs, stride_ch,
                     HEAD_DIM: tl.constexpr, NUM_HEADS: tl.constexpr,
                     BLOCK_SIZE: tl.constexpr, BLOCK: tl.constexpr, LIMIT: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return
    offs = tl.arange(0, BLOCK)
    h = offs // HEAD_DIM
    d = offs % HEAD_DIM
    mask = h < NUM_HEADS
    t64 = t.to(tl.int64)
    k = tl.load(k_ptr + t64 * stride_kt + h * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + t64 * stride_vt + h * stride_vh + d, mask=mask)
    dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs + h * stride_ch + d
    if LIMIT > 0:  # an fp8 cache: saturate (scale 1)
        k = tl.clamp(k.to(tl.float32), -LIMIT, LIMIT)
        v = tl.clamp(v.to(tl.float32), -LIMIT, LIMIT)
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Triton version of ``store_kv_ref``: k, v [T, KVH, D] (unit last stride); slot_mapping [T]."""
    T, KVH, D = k.shape
    if T == 0:
        return
    assert v.shape == k.shape and k_cache.shape == v_cache.shape and k_cache.stride() == v_cache.stride()
    assert k_cache.shape[2:] == (KVH, D), f"cache {tuple(k_cache.shape)} vs k {tuple(k.shape)}"
    assert k.stride(-1) == 1 and v.stride(-1) == 1 and k_cache.stride(-1) == 1
    block = next_pow2(KVH * D)
    _store_kv_kernel[(T,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        HEAD_DIM=D, NUM_HEADS=KVH, BLOCK_SIZE=k_cache.shape[1], BLOCK=block, LIMIT=fp8_limit(k_cache.dtype) or 0.0,
        num_warps=4 if block >= 1024 else (2 if block >= 256 else 1))
