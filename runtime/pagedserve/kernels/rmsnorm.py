"""Fused RMSNorm (+ residual add). Reference: ``pagedserve.layers.norm.rms_norm_ref``.

Grid ``(rows,)``: one program normalises one row of ``hidden`` elements held in registers
(``BLOCK = next_pow2(hidden)``). Rounding follows the torch reference exactly: the residual sum
is rounded to the input dtype (and stored as the new residual), the mean of squares and the
normalisation run in fp32, the normalised value is cast to the input dtype, and only then is it
multiplied by the weight (in fp32, rounded once to the output dtype = promote(weight, x)).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.kernels.utils import next_pow2
from pagedserve.layers.norm import rms_norm_ref

__all__ = ["rms_norm", "fused_add_rms_norm", "rms_norm_fused", "rms_norm_ref"]


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, eps,
                     stride_x, stride_r, stride_o, stride_ro,
                     N: tl.constexpr, BLOCK: tl.constexpr, HAS_RES: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_ro + offs, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, 0) / N
    normed = (xf * (1.0 / tl.sqrt(var + eps))).to(x_ptr.dtype.element_ty)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    y = w.to(tl.float32) * normed.to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    n = t.shape[-1]
    t2 = t.reshape(-1, n)  # a view when possible, a copy otherwise
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    n = x.shape[-1]
    assert weight.shape == (n,) and weight.stride(0) == 1
    out_dtype = torch.promote_types(weight.dtype, x.dtype)
    x2 = _rows(x)
    rows = x2.shape[0]
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    out2 = out.view(-1, n)
    if residual is not None:
        assert residual.shape == x.shape
        r2 = _rows(residual)
        res_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        ro2 = res_out.view(-1, n)
    else:
        r2 = ro2 = x2
        res_out = None
    if rows == 0:
        return out, res_out
    block = next_pow2(n)
    num_warps = 1 if block <= 256 else 2 if block <= 1024 else 4 if block <= 4096 else 8 if block <= 8192 else 16
    _rms_norm_kernel[(rows,)](
        x2, r2, weight, out2, ro2, float(eps),
        x2.stride(0), r2.stride(0), out2.stride(0), ro2.stride(0),
        N=n, BLOCK=block, HAS_RES=residual is not None, num_warps=num_warps)
    return out, res_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``rms_norm_ref(x, weight, eps)`` over the last dim of any-rank ``x``."""
    return _launch(x, None, weight, eps)[0]


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm_ref(x + residual), x + residual)`` in one pass (new tensors; inputs untouched)."""
    out, res = _launch(x, residual, weight, eps)
    assert res is not None
    return out, res


def rms_norm_fused(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """The ``RMSNorm.fused`` hook: ``out`` without a residual, else ``(out, x + residual)``."""
    if residual is None:
        return rms_norm(x, weight, eps)
    return fused_add_rms_norm(x, residual, weight, eps)
