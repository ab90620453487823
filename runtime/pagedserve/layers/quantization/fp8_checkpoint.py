"""Serialized fp8 checkpoints: e4m3 weights with ``weight_scale`` (and, for static activation
schemes, ``input_scale``) tensors next to them — vLLM's ``quant_method: fp8`` (AutoFP8 /
llm-compressor's older export: ``activation_scheme`` static or dynamic, ``ignored_layers``), NVIDIA
ModelOpt's ``quant_method: modelopt`` with ``quant_algo: FP8`` (``exclude_modules``), and the fp8
schemes of compressed-tensors (``compressed_tensors_w8a8.py``) all load through
:class:`Fp8LinearMethod`.

Scales. A per-tensor ``weight_scale`` of a fused layer (q/k/v, gate/up: one scale per shard) is
expanded at load to one scale per output channel, which the fp8 GEMMs take anyway
(``layers/fp8.py``): exact, no requantization of the weight. Per-channel scales are used as stored.
A static per-tensor ``input_scale`` is honoured: the activation is quantized with it (values
beyond ±448·scale saturate, as in the runtime the checkpoint was calibrated for); the shards of a
fused layer see the same input, and the largest of their scales is used (none of them clips).
Dynamic schemes quantize each token with its own scale. Static layers quantize their input
themselves, so ``worker/fusion.py`` does not hand them the per-token fp8 output of the fused
norm / activation kernels.

``--quantization fp8`` on an unquantized checkpoint stays online quantization
(``fp8_online.py``): :class:`Fp8Config` decides from the checkpoint's ``quantization_config``.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedserve.kernels.fp8_utils import FP8_DTYPE, FP8_MAX
from pagedserve.layers.fp8 import check_fp8_device, fp8_linear, quantizable
from pagedserve.layers.quantization.base import LinearMethod, QuantizationConfig, set_weight_attrs
from pagedserve.layers.quantization.fp8_online import Fp8OnlineConfig
from pagedserve.layers.quantization.layer_names import layer_in, matches_glob

logger = logging.getLogger(__name__)

#: ``load_format="dummy"``: weights uniform over fp8's range times this scale → |w| <= 2e-2, like
#: the unquantized dummy weights; activations saturate at 448 * DUMMY_INPUT_SCALE = 16
DUMMY_WEIGHT_SCALE = 2e-2 / FP8_MAX
DUMMY_INPUT_SCALE = 16.0 / FP8_MAX


def per_channel_scales(scale: torch.Tensor, widths: list[int], per_channel: bool) -> torch.Tensor:
    """A loaded ``weight_scale`` → fp32 [N]: per-channel ``[N, 1]`` / ``[N]`` as is, or one scale
    per fused shard repeated over that shard's ``widths[i]`` rows."""
    scale = scale.detach().float()
    if per_channel:
        return scale.reshape(-1).contiguous()
    return torch.repeat_interleave(scale.reshape(-1), torch.tensor(widths, device=scale.device)).contiguous()


class Fp8LinearMethod(LinearMethod):
    """e4m3 ``weight`` [out, in] with a per-tensor (one per fused shard) or per-channel
    ``weight_scale``, and a static per-tensor ``input_scale`` when ``static_input``."""

    weight_dtype = FP8_DTYPE
    dummy_weight_scale, dummy_input_scale = DUMMY_WEIGHT_SCALE, DUMMY_INPUT_SCALE

    def __init__(self, per_channel: bool, static_input: bool) -> None:
        self.per_channel, self.static_input = per_channel, static_input

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int,
                       output_sizes: list[int], params_dtype: torch.dtype) -> None:
        layer.logical_widths, layer.params_dtype = list(output_sizes), params_dtype
        weight = nn.Parameter(torch.empty(output_size, input_size, dtype=self.weight_dtype), requires_grad=False)
        set_weight_attrs(weight, output_dim=0, input_dim=1)
        layer.register_parameter("weight", weight)
        if self.per_channel:
            scale = nn.Parameter(torch.empty(output_size, 1, dtype=torch.float32), requires_grad=False)
            set_weight_attrs(scale, output_dim=0)
        else:
            scale = nn.Parameter(torch.empty(len(output_sizes), dtype=torch.float32), requires_grad=False)
            set_weight_attrs(scale, shard_scalar=True)
        set_weight_attrs(scale, dummy_value=self.dummy_weight_scale)
        layer.register_parameter("weight_scale", scale)
        if self.static_input:
            inp = nn.Parameter(torch.empty(len(output_sizes), dtype=torch.float32), requires_grad=False)
            set_weight_attrs(inp, shard_scalar=True, dummy_value=self.dummy_input_scale)
            layer.register_parameter("input_scale", inp)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        scale = per_channel_scales(layer.weight_scale, layer.logical_widths, self.per_channel)
        if self.static_input:
            layer.input_scale = nn.Parameter(layer.input_scale.detach().float().amax().reshape(1),
                                             requires_grad=False)
        layer.fp8_dequantized = self.weight_dtype == FP8_DTYPE and not quantizable(layer.weight)
        if layer.fp8_dequantized:  # fp8 GEMMs need dims divisible by 16: keep this one in the model dtype
            logger.warning("fp8 checkpoint: %s %s dequantized to %s (a dimension is not divisible by 16)",
                           getattr(layer, "prefix", ""), tuple(layer.weight.shape), layer.params_dtype)
            w = layer.weight.detach().float() * scale[:, None]
            layer.weight = nn.Parameter(w.to(layer.params_dtype), requires_grad=False)
            del layer.weight_scale
            return
        layer.weight_scale = nn.Parameter(scale, requires_grad=False)

    def apply(self, layer: nn.Module, x: Any, bias: torch.Tensor | None) -> torch.Tensor:
        if layer.fp8_dequantized:
            return F.linear(x, layer.weight, bias)
        return fp8_linear(x, layer.weight, layer.weight_scale, bias,
                          input_scale=layer.input_scale if self.static_input else None)

    def accepts_fp8_act(self, layer: nn.Module) -> bool:
        return not self.static_input and not getattr(layer, "fp8_dequantized", False)


class Fp8CheckpointConfig(QuantizationConfig):
    """A checkpoint of per-tensor fp8 weights (``quant_method`` fp8 or modelopt)."""

    name = "fp8"

    def __init__(self, static_input: bool, ignored: list[str], source: str) -> None:
        self.static_input, self.ignored, self.source = static_input, ignored, source

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod | None:
        if layer_in(prefix, self.ignored, matches_glob):
            return None
        return Fp8LinearMethod(per_channel=False, static_input=self.static_input)

    def describe(self) -> str:
        act = "static per-tensor" if self.static_input else "dynamic per-token"
        return f"{self.source} (fp8 checkpoint: per-tensor weight scales, {act} activations)"

    def check_device(self, device: str) -> None:
        check_fp8_device(device)


class Fp8Config(QuantizationConfig):
    """``fp8``: a serialized fp8 checkpoint when config.json says so, else online quantization
    (``--quantization fp8`` on an unquantized checkpoint)."""

    name = "fp8"
    online = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> QuantizationConfig:
        if not config:
            return Fp8OnlineConfig()
        if config.get("weight_block_size") is not None:
            raise ValueError(f"quantization_config.weight_block_size={config['weight_block_size']}: block-wise fp8 "
                             "checkpoints (DeepSeek-style) are not supported; use a per-tensor or per-channel fp8 "
                             "export")
        scheme = str(config.get("activation_scheme", "dynamic")).lower()
        if scheme not in ("static", "dynamic"):
            raise ValueError(f"quantization_config.activation_scheme must be 'static' or 'dynamic', got {scheme!r}")
        fmt = str(config.get("fmt", "e4m3")).lower()
        if fmt != "e4m3":
            raise ValueError(f"quantization_config.fmt={fmt!r}: only e4m3 fp8 checkpoints are supported")
        return Fp8CheckpointConfig(scheme == "static", list(config.get("ignored_layers") or []), "fp8")


class ModelOptFp8Config(QuantizationConfig):
    """``modelopt``: NVIDIA ModelOpt's export (``quant_algo: FP8``: per-tensor weight and static
    per-tensor input scales). Other algorithms (NVFP4, INT4_AWQ, ...) get a clear error."""

    name = "modelopt"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> QuantizationConfig:
        inner = config.get("quantization", config)  # hf_quant_config.json nests it
        algo = str(inner.get("quant_algo") or "").upper()
        if algo != "FP8":
            raise ValueError(f"quantization_config.quant_algo={inner.get('quant_algo')!r}: of ModelOpt's "
                             "algorithms only FP8 is supported")
        return Fp8CheckpointConfig(True, list(inner.get("exclude_modules") or []), "modelopt")


__all__ = ["Fp8CheckpointConfig", "Fp8Config", "Fp8LinearMethod", "ModelOptFp8Config", "per_channel_scales"]
