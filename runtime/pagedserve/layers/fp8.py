"""``--quantization fp8``: online fp8 (e4m3) quantization of the linear layers, as vLLM's flag does
for an unquantized checkpoint.

After loading, each linear weight becomes fp8 with one fp32 scale per output channel (its row's
absolute maximum / 448); activations are quantized per token at run time. Both scales are applied
to the fp32 accumulator, so ``y ≈ x @ w^T`` within fp8's ~3 mantissa bits. The embedding and the
LM head stay in the model dtype (as in vLLM). Where the weight is read once for a few tokens
(M <= 64, decode) the product runs in the skinny Triton kernel (``kernels/gemv.py``); larger M
goes to ``torch._scaled_mm`` (CUTLASS, fp8 tensor cores: ~1.5x bf16 cuBLAS from M = 1,024 on the
H200, RESULTS.md run 20). On CPU (tests) the same arithmetic runs through torch.

Needs a GPU of compute capability 8.9+ (fp8 tensor cores); checked when the engine is configured.
This module does not import Triton (the kernels are imported on first use on a GPU), so CPU runs
never load it.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
# Smallest scale: keeps an all-zero row finite (same floor as vLLM's dynamic quantization).
MIN_SCALE = 1.0 / (FP8_MAX * 512.0)
GEMV_MAX_M = 64  # kernels/gemv.MAX_M: the skinny kernel's largest M


class Fp8Act(NamedTuple):
    """An activation already quantized per token by the kernel that produced it (RMSNorm or
    SiLU-and-mul with ``quant_out``, ``worker/fusion.py``): the next fp8 linear layer skips its
    own quantization launch. ``q`` [M, K] fp8, ``scale`` [M, 1] fp32, ``dtype`` of the result."""

    q: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype


def quantize_per_token_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise dynamic quantization in torch: q [M, K] fp8, scale [M, 1] fp32, x ≈ q * scale
    (the reference of ``kernels/quant_fp8.quantize_per_token``)."""
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=MIN_SCALE)
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def gemv_config(n: int, k: int) -> tuple[int, int, int, int]:
    """The skinny kernel's tile (block_n, block_k, num_warps, num_stages) for an [n, k] fp8 weight:
    the fastest at M = 32 in the H200 searches of RESULTS.md runs 21 and 30 (run 30: a six-stage
    pipeline of 64 x 256 tiles beat run 21's 64 x 512 x 3 stages by 5-7% on qkv, o and down)."""
    if n >= 16384:  # gate_up-like: many programs already; wide tiles, 8 warps
        return 128, 128, 8, 4
    return 64, 256, 4, 6


def check_fp8_device(device: str) -> None:
    """fp8 tensor cores: Ada / Hopper (compute capability 8.9) or newer."""
    if device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        if (major, minor) < (8, 9):
            raise ValueError(f"quantization=fp8 needs a GPU with compute capability >= 8.9 (fp8 tensor cores); "
                             f"this one has {major}.{minor}")


def quantizable(weight: torch.Tensor) -> bool:
    """fp8 GEMMs need both dimensions divisible by 16."""
    return weight.dim() == 2 and weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] → (fp8 [N, K], fp32 per-output-channel scale [N])."""
    q, s = quantize_per_token_ref(weight)
    return q.contiguous(), s.view(-1).contiguous()


def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.is_cuda:
        from pagedserve.kernels.quant_fp8 import quantize_per_token

        return quantize_per_token(x)
    return quantize_per_token_ref(x)


def fp8_linear(x: torch.Tensor | Fp8Act, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ dequant(weight)^T + bias`` with ``x`` quantized per token (here, unless it comes as an
    :class:`Fp8Act`); result in x's dtype."""
    if isinstance(x, Fp8Act):
        q, s, dtype = x
        shape = q.shape
    else:
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, shape[-1])
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        q, s = quantize_activation(x2)
    if q.is_cuda and q.shape[0] <= GEMV_MAX_M:
        from pagedserve.kernels.gemv import gemv

        bn, bk, nw, ns = gemv_config(*weight.shape)
        y = gemv(q, weight, bias, x_scale=s.view(-1), w_scale=weight_scale, out_dtype=dtype,
                 block_n=bn, block_k=bk, num_warps=nw, num_stages=ns)
    else:
        # CUDA's row-wise scaled GEMM writes bf16 only
        out = torch.bfloat16 if q.is_cuda else dtype
        y = torch._scaled_mm(q, weight.t(), scale_a=s, scale_b=weight_scale.view(1, -1), out_dtype=out)
        if y.dtype != dtype:
            y = y.to(dtype)
        if bias is not None:
            y = y + bias
    return y.view(*shape[:-1], weight.shape[0])


def quantize_model_fp8(model: nn.Module) -> int:
    """Convert every tensor-parallel linear layer of a loaded model to fp8; returns how many."""
    from pagedserve.layers.linear import LinearBase

    n = skipped = 0
    for m in model.modules():
        if isinstance(m, LinearBase):
            if quantizable(m.weight):
                m.quantize_fp8()
                n += 1
            else:
                skipped += 1
    if skipped:
        logger.warning("fp8: %d linear layer(s) kept in %s (a dimension is not divisible by 16)",
                       skipped, next(model.parameters()).dtype)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    logger.info("fp8: %d linear layers quantized (per-channel weight scales, per-token activations)", n)
    return n


__all__ = ["FP8_DTYPE", "Fp8Act", "check_fp8_device", "fp8_linear", "quantize_model_fp8", "quantize_per_token_ref", "quantize_weight"]
