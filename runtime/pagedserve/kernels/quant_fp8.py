"""Dynamic per-token fp8 (e4m3) quantization of activations: ``x[M, K] -> (q[M, K], scale[M, 1])``.

One program per row: a first pass finds the row's absolute maximum, the second writes
``clamp(x / scale)`` as fp8 with ``scale = max(absmax, eps) / 448``. One launch instead of the
five or six of the torch expression (``quantize_per_token_ref``), which matters inside a decode
step that quantizes four activations per layer. The row is read twice; it is small and the
second read hits the cache. Reference: ``kernels.fp8_utils.quantize_per_token_ref``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.kernels.fp8_utils import FP8_DTYPE, FP8_MAX, MIN_SCALE

_FP8_MAX = tl.constexpr(FP8_MAX)
_MIN_SCALE = tl.constexpr(MIN_SCALE)


@triton.jit
def fp8_row_scale(amax):
    """A row's scale from its absolute maximum (shared by every kernel that quantizes per token)."""
    return tl.maximum(amax / _FP8_MAX, _MIN_SCALE)


@triton.jit
def fp8_scaled(y, scale):
    """``y / scale`` clamped to e4m3's finite range, ready for the cast to fp8."""
    return tl.clamp(y / scale, -_FP8_MAX, _FP8_MAX)


@triton.jit
def _quant_kernel(x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_x
    q_row = q_ptr + row.to(tl.int64) * stride_q
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        v = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(v))
    scale = fp8_row_scale(tl.max(amax, axis=0))
    tl.store(s_ptr + row, scale)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        v = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        q = fp8_scaled(v, scale)
        tl.store(q_row + offs, q.to(q_ptr.dtype.element_ty), mask=offs < K)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (unit last stride) → q [M, K] fp8 e4m3, scale [M, 1] fp32."""
    M, K = x.shape
    assert x.stride(1) == 1
    q = torch.empty((M, K), dtype=FP8_DTYPE, device=x.device)
    s = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    if M:
        _quant_kernel[(M,)](x, q, s, K, x.stride(0), q.stride(0), BLOCK=min(2048, triton.next_power_of_2(K)),
                            num_warps=4)
    return q, s


@triton.jit
def _quant_static_kernel(x_ptr, q_ptr, s_ptr, scale_ptr, K, stride_x, stride_q, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_x
    q_row = q_ptr + row.to(tl.int64) * stride_q
    scale = tl.load(scale_ptr)
    tl.store(s_ptr + row, scale)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        v = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        tl.store(q_row + offs, fp8_scaled(v, scale).to(q_ptr.dtype.element_ty), mask=offs < K)


def quantize_static(x: torch.Tensor, input_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (unit last stride) with a static per-tensor fp32 ``input_scale`` (a checkpoint's)
    → q [M, K] fp8, scale [M, 1] (the input scale per row, as the fp8 GEMMs take it); one launch.
    Reference: ``layers.fp8.quantize_static_ref``."""
    M, K = x.shape
    assert x.stride(1) == 1 and input_scale.numel() == 1
    q = torch.empty((M, K), dtype=FP8_DTYPE, device=x.device)
    s = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    if M:
        _quant_static_kernel[(M,)](x, q, s, input_scale, K, x.stride(0), q.stride(0),
                                   BLOCK=min(2048, triton.next_power_of_2(K)), num_warps=4)
    return q, s
