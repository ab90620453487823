"""INT8 W8A8 basics without Triton (CPU runs and the layers import this; ``kernels/int8_gemm.py``
holds the Triton kernels): symmetric int8 quantization of activations, per token or with a static
per-tensor scale, and the reference GEMM ``y = (a_q @ b_q^T) * a_scale[M] * b_scale[N] + bias``
with exact int32 accumulation.
"""
from __future__ import annotations

import torch

INT8_MAX = 127.0
INT8_MIN = -128.0
#: smallest per-token scale: keeps an all-zero row finite
MIN_SCALE = 1e-10


def quantize_int8_ref(x: torch.Tensor, input_scale: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] → (int8 [M, K], fp32 scale [M, 1]) with ``x ≈ q * scale``: per token
    (``scale = absmax / 127``) or with the static per-tensor ``input_scale``; round half to even,
    saturating at [-128, 127]."""
    xf = x.float()
    if input_scale is None:
        scale = (xf.abs().amax(dim=-1, keepdim=True) / INT8_MAX).clamp(min=MIN_SCALE)
    else:
        scale = input_scale.float().reshape(1, 1).expand(x.shape[0], 1)
    q = torch.round(xf / scale).clamp(INT8_MIN, INT8_MAX).to(torch.int8)
    return q, scale.contiguous()


def int_mm_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 [M, K] @ int8 [N, K]^T → int32 [M, N], exact."""
    if a.device.type == "cpu" and a.shape[0] > 0:
        return torch._int_mm(a.contiguous(), b.t().contiguous())
    return (a.double() @ b.double().t()).to(torch.int32)  # exact while K * 2^14 < 2^53


def int8_gemm_ref(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
                  bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(a @ b^T) * a_scale[M] * b_scale[N] (+ bias)`` in fp32, cast to ``out_dtype``
    (the reference of ``kernels/int8_gemm.int8_gemm``)."""
    y = int_mm_ref(a, b).float() * a_scale.float().view(-1, 1) * b_scale.float().view(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)
