"""``--quantization fp8`` on an unquantized checkpoint: each linear weight is loaded in the model
dtype, then quantized to fp8 with one scale per output channel (``layers/fp8.py`` holds the
arithmetic and the kernels it calls)."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from pagedserve.layers.fp8 import check_fp8_device, fp8_linear, quantizable, quantize_weight
from pagedserve.layers.quantization.base import LinearMethod, QuantizationConfig, UnquantizedLinearMethod

logger = logging.getLogger(__name__)


class Fp8OnlineLinearMethod(UnquantizedLinearMethod):
    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if not quantizable(layer.weight):
            logger.warning("fp8: %s kept in %s (a dimension of %s is not divisible by 16)",
                           type(layer).__name__, layer.weight.dtype, tuple(layer.weight.shape))
            return
        q, scale = quantize_weight(layer.weight.data)
        layer.weight = nn.Parameter(q, requires_grad=False)
        layer.register_buffer("weight_scale", scale)

    def apply(self, layer: nn.Module, x: Any, bias: torch.Tensor | None) -> torch.Tensor:
        if layer.weight.element_size() == 1:
            return fp8_linear(x, layer.weight, layer.weight_scale, bias)
        return super().apply(layer, x, bias)

    def accepts_fp8_act(self, layer: nn.Module) -> bool:
        return layer.weight.element_size() == 1


class Fp8OnlineConfig(QuantizationConfig):
    name = "fp8"
    online = True

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod:
        return Fp8OnlineLinearMethod()

    def describe(self) -> str:
        return "fp8 (online: per-channel weight scales, per-token activations)"

    def check_device(self, device: str) -> None:
        check_fp8_device(device)
