"""Fused SiLU-and-mul (SwiGLU). Reference: ``pagedserve.layers.activation.silu_and_mul_ref``.

Grid ``(rows, cdiv(I, BLOCK))`` over ``x [..., 2I] -> out [..., I]``; ``out = silu(gate) * up`` with
the reference's rounding: silu in fp32, rounded to the input dtype, then the product (fp32,
rounded once).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.kernels.utils import cdiv, next_pow2
from pagedserve.layers.activation import silu_and_mul_ref

__all__ = ["silu_and_mul", "silu_and_mul_ref"]


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, I, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < I
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + I + offs, mask=mask, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [..., 2I] -> [..., I] (``SiluAndMul.fused``)."""
    two_i = x.shape[-1]
    assert two_i % 2 == 0
    inter = two_i // 2
    x2 = x.reshape(-1, two_i)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
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
