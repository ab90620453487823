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

import torch

from pagedserve.kernels.fp8_utils import FP8_DTYPE, FP8_MAX, Fp8Act, quantize_per_token_ref

GEMV_MAX_M = 64  # kernels/gemv.MAX_M: the skinny kernel's largest M


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


def quantize_static_ref(x: torch.Tensor, input_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] → (fp8 [M, K], fp32 scale [M, 1]) with a checkpoint's static per-tensor
    ``input_scale`` (one fp32 value; values beyond ±448·scale saturate)."""
    s = input_scale.float().reshape(1, 1)
    q = (x.float() / s).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, s.expand(x.shape[0], 1).contiguous()


def quantize_static(x: torch.Tensor, input_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.is_cuda:
        from pagedserve.kernels.quant_fp8 import quantize_static as quantize_static_triton

        return quantize_static_triton(x, input_scale)
    return quantize_static_ref(x, input_scale)


def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.is_cuda:
        from pagedserve.kernels.quant_fp8 import quantize_per_token

        return quantize_per_token(x)
    return quantize_per_token_ref(x)


def fp8_linear(x: torch.Tensor | Fp8Act, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None, input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(weight)^T + bias`` with ``x`` quantized per token (here, unless it comes as an
    :class:`Fp8Act`), or with the static ``input_scale`` of a serialized checkpoint when given;
    ``weight_scale`` holds one fp32 value per output channel. Result in x's dtype."""
    if isinstance(x, Fp8Act):
        q, s, dtype = x
        shape = q.shape
    else:
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, shape[-1])
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        q, s = quantize_activation(x2) if input_scale is None else quantize_static(x2, input_scale)
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


__all__ = ["check_fp8_device", "fp8_linear", "quantize_weight"]
