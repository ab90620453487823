"""INT8 W8A8 linear layers: symmetric int8 weights with one fp32 scale per output channel,
activations quantized to int8 at run time (per token, or with a checkpoint's static per-tensor
scale). ``y = (x_q @ w_q^T) * x_scale * w_scale + bias``: the product accumulates exactly in int32
and both scales are applied to it in fp32.

On CUDA the Triton kernels of ``kernels/int8_gemm.py`` run it (int8 tensor cores, Ampere and
newer); on CPU the torch reference (``kernels/int8_utils.py``, ``torch._int_mm``). This module does
not import Triton, so CPU runs never load it. Activations always come in the model dtype: the fused
norm / activation kernels emit fp8, never int8, so an INT8 layer never accepts their output.
"""
from __future__ import annotations

import torch

from pagedserve.kernels.int8_utils import int8_gemm_ref, quantize_int8_ref


def check_int8_device(device: str) -> None:
    """int8 tensor cores: compute capability 8.0 (Ampere) or newer."""
    if device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        if major < 8:
            raise ValueError(f"INT8 W8A8 needs a GPU with compute capability >= 8.0; this one has {major}.{minor}")


def quantize_weight_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float → (int8 [N, K], fp32 per-channel scale [N]): symmetric, ``absmax / 127``."""
    q, s = quantize_int8_ref(weight)
    return q, s.view(-1)


def int8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(weight)^T + bias`` with ``x`` quantized to int8 (per token, or with the static
    ``input_scale``); ``weight`` int8 [N, K], ``weight_scale`` fp32 [N]. Result in x's dtype."""
    shape, dtype = x.shape, x.dtype
    x2 = x.reshape(-1, shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if x2.is_cuda:
        from pagedserve.kernels.int8_gemm import int8_gemm, quantize_int8

        q, s = quantize_int8(x2, input_scale)
        y = int8_gemm(q, weight, s, weight_scale, bias, out_dtype=dtype)
    else:
        q, s = quantize_int8_ref(x2, input_scale)
        y = int8_gemm_ref(q, weight, s, weight_scale, bias, out_dtype=dtype)
    return y.view(*shape[:-1], weight.shape[0])


__all__ = ["check_int8_device", "int8_linear", "quantize_weight_int8"]
