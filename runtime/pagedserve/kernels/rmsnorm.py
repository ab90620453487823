"""Fused RMSNorm (+ residual add, + fp8 quantization). Reference: ``pagedserve.layers.norm.rms_norm_ref``.

Grid ``(rows,)``: one program normalises one row of ``hidden`` elements held in registers
(``BLOCK = next_pow2(hidden)``). Rounding follows the torch reference exactly: the residual sum
is rounded to the input dtype (and stored as the new residual), the mean of squares and the
normalisation run in fp32, the normalised value is cast to the input dtype, and only then is it
multiplied by the weight (in fp32, rounded once to the output dtype = promote(weight, x)).

With ``quant=True`` (``--quantization fp8``, when the next layer is an fp8 linear) the program
also quantizes its row per token, as ``kernels.fp8_utils.quantize_per_token_ref`` does to the rounded
output, and writes only the fp8 row and its scale: one launch less per norm.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.kernels.utils import next_pow2
from pagedserve.kernels.quant_fp8 import fp8_row_scale, fp8_scaled
from pagedserve.kernels.fp8_utils import FP8_DTYPE, Fp8Act

__all__ = ["rms_norm", "fused_add_rms_norm", "rms_norm_fused"]


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, scale_ptr, eps,
                     stride_x, stride_r, stride_o, stride_ro,
                     N: tl.constexpr, BLOCK: tl.constexpr, HAS_RES: tl.constexpr,
                     QUANT: tl.constexpr):
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
    if QUANT:  # the rounded output, quantized per token (out_ptr is the fp8 row)
        y = y.to(x_ptr.dtype.element_ty).to(tl.float32)
        scale = fp8_row_scale(tl.max(tl.abs(y), 0))
        tl.store(scale_ptr + row, scale)
        y = fp8_scaled(y, scale)
    tl.store(out_ptr + row * stride_o + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    n = t.shape[-1]
    t2 = t.reshape(-1, n)  # a view when possible, a copy otherwise
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
            quant: bool = False):
    n = x.shape[-1]
    assert weight.shape == (n,) and weight.stride(0) == 1
    out_dtype = torch.promote_types(weight.dtype, x.dtype)
    x2 = _rows(x)
    rows = x2.shape[0]
    if quant:  # an Fp8Act of the rows; its dtype is the output dtype the fp8 linear returns
        assert out_dtype == x.dtype, "fp8 output needs weight and input of one dtype"
        q = torch.empty((rows, n), dtype=FP8_DTYPE, device=x.device)
        scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
        out, out2 = Fp8Act(q, scale, out_dtype), q
    else:
        out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        out2, scale = out.view(-1, n), x2
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
        x2, r2, weight, out2, ro2, scale, float(eps),
        x2.stride(0), r2.stride(0), out2.stride(0), ro2.stride(0),
        N=n, BLOCK=block, HAS_RES=residual is not None, QUANT=quant, num_warps=num_warps)
    return out, res_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, quant: bool = False) -> torch.Tensor | Fp8Act:
    """``rms_norm_ref(x, weight, eps)`` over the last dim of any-rank ``x`` (``quant``: as an
    :class:`Fp8Act` of its rows)."""
    return _launch(x, None, weight, eps, quant)[0]


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       quant: bool = False) -> tuple[torch.Tensor | Fp8Act, torch.Tensor]:
    """``(rms_norm_ref(x + residual), x + residual)`` in one pass (new tensors; inputs untouched)."""
    out, res = _launch(x, residual, weight, eps, quant)
    assert res is not None
    return out, res


def rms_norm_fused(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                   quant: bool = False):
    """The ``RMSNorm.fused`` hook: ``out`` without a residual, else ``(out, x + residual)``."""
    if residual is None:
        return rms_norm(x, weight, eps, quant)
    return fused_add_rms_norm(x, residual, weight, eps, quant)
