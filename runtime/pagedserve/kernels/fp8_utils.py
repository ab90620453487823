"""fp8 (e4m3) basics shared by the fp8 kernels and the fp8 linear layers (``layers/fp8.py``): the
dtype and its range, the :class:`Fp8Act` a fused kernel hands to the next fp8 linear layer, and the
torch reference of per-token quantization (``kernels/quant_fp8.quantize_per_token``).
Triton-free, so CPU runs and the layers import it without loading Triton.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
# Smallest scale: keeps an all-zero row finite (same floor as vLLM's dynamic quantization).
MIN_SCALE = 1.0 / (FP8_MAX * 512.0)


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
