"""Fused rotary embedding for q and k in one launch (neox / rotate-half style).
Reference: ``pagedserve.layers.rotary.apply_rotary_ref`` with ``cos/sin = cache[positions]``.

Grid ``(num_tokens, cdiv(H + KVH, BLOCK_H))``: a program loads the token's position, its cos/sin
row (``[D/2]`` fp32) once, and rotates ``BLOCK_H`` heads taken from the concatenation of q's and
k's heads, **in place**. Rounding follows the reference (which works in the input dtype): cos/sin
are rounded to the input dtype, ``x*cos`` and ``rot*sin`` are each rounded, then their sum.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.kernels.utils import cdiv, next_pow2

__all__ = ["rotary_embedding", "rotary_fused"]


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, pos_ptr, cos_ptr, sin_ptr,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_cos,
                   NUM_Q_HEADS: tl.constexpr, NUM_K_HEADS: tl.constexpr,
                   HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    hh = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    c = tl.arange(0, BLOCK_HALF)
    c_mask = c < HALF
    pos = tl.load(pos_ptr + t).to(tl.int64)
    cos = tl.load(cos_ptr + pos * stride_cos + c, mask=c_mask, other=0.0)
    sin = tl.load(sin_ptr + pos * stride_cos + c, mask=c_mask, other=0.0)
    cos = cos.to(q_ptr.dtype.element_ty).to(tl.float32)[None, :]
    sin = sin.to(q_ptr.dtype.element_ty).to(tl.float32)[None, :]

    # q heads
    is_q = hh < NUM_Q_HEADS
    m = is_q[:, None] & c_mask[None, :]
    base = q_ptr + t * stride_qt + hh[:, None] * stride_qh + c[None, :]
    x1 = tl.load(base, mask=m, other=0.0)
    x2 = tl.load(base + HALF, mask=m, other=0.0)
    dt = x1.dtype
    x1f = x1.to(tl.float32)
    x2f = x2.to(tl.float32)
    y1 = ((x1f * cos).to(dt).to(tl.float32) - (x2f * sin).to(dt).to(tl.float32)).to(dt)
    y2 = ((x2f * cos).to(dt).to(tl.float32) + (x1f * sin).to(dt).to(tl.float32)).to(dt)
    tl.store(base, y1, mask=m)
    tl.store(base + HALF, y2, mask=m)

    # k heads
    kh = hh - NUM_Q_HEADS
    is_k = (hh >= NUM_Q_HEADS) & (kh < NUM_K_HEADS)
    m = is_k[:, None] & c_mask[None, :]
    kbase = k_ptr + t * stride_kt + kh[:, None] * stride_kh + c[None, :]
    x1 = tl.load(kbase, mask=m, other=0.0)
    x2 = tl.load(kbase + HALF, mask=m, other=0.0)
    dt = x1.dtype
    x1f = x1.to(tl.float32)
    x2f = x2.to(tl.float32)
    y1 = ((x1f * cos).to(dt).to(tl.float32) - (x2f * sin).to(dt).to(tl.float32)).to(dt)
    y2 = ((x2f * cos).to(dt).to(tl.float32) + (x1f * sin).to(dt).to(tl.float32)).to(dt)
    tl.store(kbase, y1, mask=m)
    tl.store(kbase + HALF, y2, mask=m)


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_cache: torch.Tensor,
                     sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, H, D] and k [T, KVH, D] in place (unit last stride; any token/head strides)
    by the angles of ``positions [T]``; cos/sin caches [max_pos, D/2] fp32. Returns ``(q, k)``."""
    T, H, D = q.shape
    KVH = k.shape[1]
    assert k.shape == (T, KVH, D) and q.dtype == k.dtype and D % 2 == 0
    assert q.stride(-1) == 1 and k.stride(-1) == 1
    half = D // 2
    assert cos_cache.shape[-1] == half and sin_cache.shape == cos_cache.shape
    assert cos_cache.stride() == sin_cache.stride() and cos_cache.stride(-1) == 1
    if T == 0:
        return q, k
    block_half = next_pow2(half)
    block_h = min(next_pow2(H + KVH), max(1, 2048 // block_half))
    grid = (T, cdiv(H + KVH, block_h))
    _rotary_kernel[grid](
        q, k, positions, cos_cache, sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_cache.stride(0),
        NUM_Q_HEADS=H, NUM_K_HEADS=KVH, HALF=half, BLOCK_HALF=block_half, BLOCK_H=block_h,
        num_warps=4 if block_h * block_half >= 1024 else 2)
    return q, k


def rotary_fused(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_cache: torch.Tensor,
                 sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``RotaryEmbedding.fused`` hook (in place; returns ``(q, k)``)."""
    return rotary_embedding(positions, q, k, cos_cache, sin_cache)
