"""Fused SiLU-and-mul (SwiGLU). Reference: ``pagedserve.layers.activation.silu_and_mul_ref``.

Grid ``(rows, cdiv(I, BLOCK))`` over ``x [..., 2I] -> out [..., I]``; ``out = silu(gate) * up`` with
the reference's rounding: silu in fp32, rounded to the input dtype, then the product (fp32,
rounded once).

``quant=True`` (``--quantization fp8``, before an fp8 down projection): one program per row holds
the whole row in registers, rounds the product to the input dtype, quantizes it per token
(``kernels.fp8_utils.quantize_per_token_ref``) and writes the fp8 row and its scale, saving the separate
quantization launch. Rows wider than ``QUANT_MAX_BLOCK`` take the two launches.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.kernels.utils import cdiv, next_pow2
from pagedserve.kernels.quant_fp8 import fp8_row_scale, fp8_scaled, quantize_per_token
from pagedserve.kernels.fp8_utils import FP8_DTYPE, Fp8Act

__all__ = ["silu_and_mul"]

QUANT_MAX_BLOCK = 16384  # the widest row one program quantizes from registers (Llama-3.1-8B: 14,336)


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, I, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < I
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + I + offs, mask=mask, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_and_mul_quant_kernel(x_ptr, q_ptr, scale_ptr, stride_x, stride_q, I, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < I
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + I + offs, mask=mask, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(x_ptr.dtype.element_ty).to(tl.float32)
    y = (act * up).to(x_ptr.dtype.element_ty).to(tl.float32)
    scale = fp8_row_scale(tl.max(tl.abs(y), 0))
    tl.store(scale_ptr + row, scale)
    tl.store(q_ptr + row * stride_q + offs, fp8_scaled(y, scale).to(q_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None, quant: bool = False) -> torch.Tensor | Fp8Act:
    """x: [..., 2I] -> [..., I] (``SiluAndMul.fused``); ``quant``: an :class:`Fp8Act` of the rows."""
    two_i = x.shape[-1]
    assert two_i % 2 == 0
    inter = two_i // 2
    x2 = x.reshape(-1, two_i)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if quant:
        return _silu_and_mul_quant(x2, inter)
    if out is None:
        out = torch.empty((*x.shape[:-1], inter), dtype=x.dtype, device=x.device)
    out2 = out.view(-1, inter)
    rows = x2.shape[0]
    if rows == 0 or inter == 0:
        return out
    block = min(1024, next_pow2(inter))
    _silu_and_mul_kernel[(rows, cdiv(inter, block))](
        x2, out2, x2.stride(0), out2.stride(0), inter, BLOCK=block,
        num_warps=4 if block >= 1024 else 2 if block >= 256 else 1)
    return out


def _silu_and_mul_quant(x2: torch.Tensor, inter: int) -> Fp8Act:
    rows = x2.shape[0]
    block = next_pow2(inter)
    if block > QUANT_MAX_BLOCK:  # too wide for one program's registers: two launches
        return Fp8Act(*quantize_per_token(silu_and_mul(x2)), x2.dtype)
    q = torch.empty((rows, inter), dtype=FP8_DTYPE, device=x2.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x2.device)
    if rows and inter:
        _silu_and_mul_quant_kernel[(rows,)](
            x2, q, scale, x2.stride(0), q.stride(0), inter, BLOCK=block, num_warps=max(1, min(16, block // 1024)))
    return Fp8Act(q, scale, x2.dtype)
