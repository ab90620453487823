"""The seam between linear layers and quantization formats (the idea of vLLM's ``QuantizeMethodBase``).

A :class:`QuantizationConfig` is read from a checkpoint's ``quantization_config`` (or made for an
online method such as ``--quantization fp8``). While a model is built, every linear layer asks the
current config for its :class:`LinearMethod`, which

1. ``create_weights``: registers the layer's parameters in the checkpoint's own layout (``qweight``,
   ``scales``, ``weight_packed``, ...), each tagged with the attributes the sharded weight loader of
   ``layers/linear.py`` reads (:func:`set_weight_attrs`);
2. ``process_weights_after_loading``: repacks them once into the layout its kernel wants;
3. ``apply``: computes ``x @ W^T + bias``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn


def set_weight_attrs(param: torch.Tensor, **attrs: Any) -> None:
    """Tag a parameter for the sharded loader. Attributes it reads:

    - ``output_dim`` / ``input_dim``: which dimension holds the output / input features (None: the
      parameter is not split along that side; a column- or row-parallel layer then copies it whole);
    - ``packed_dim`` and ``pack_factor``: that dimension stores ``pack_factor`` logical elements per
      entry (eight int4 values per int32), so shard offsets along it are divided by the factor;
    - ``shard_scalar``: the parameter holds one value per fused shard (q, k, v or gate, up), e.g. a
      per-tensor fp8 scale; shard ``i`` of a fused layer is written to element ``i``.
    """
    for k, v in attrs.items():
        setattr(param, k, v)


class LinearMethod:
    """How one linear layer stores and applies its weight."""

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int,
                       output_sizes: list[int], params_dtype: torch.dtype) -> None:
        """Register the parameters of a layer with ``input_size`` x ``output_size`` local features
        (``output_sizes``: the local sizes of the fused shards, one entry when not fused)."""
        raise NotImplementedError

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Called once after every weight is loaded (repack, transpose, quantize)."""

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    #: the layer consumes fp8 per-token activations (``kernels.fp8_utils.Fp8Act``); the fused norm
    #: and activation kernels then quantize their output for it (``worker/fusion.py``)
    def accepts_fp8_act(self, layer: nn.Module) -> bool:
        return False

    def is_quantized(self, layer: nn.Module) -> bool:
        """The layer holds quantized weights (counted in the start-up log)."""
        return True


class UnquantizedLinearMethod(LinearMethod):
    """A plain ``[out, in]`` weight in the model dtype."""

    def is_quantized(self, layer: nn.Module) -> bool:
        return layer.weight.element_size() == 1

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int,
                       output_sizes: list[int], params_dtype: torch.dtype) -> None:
        weight = nn.Parameter(torch.empty(output_size, input_size, dtype=params_dtype), requires_grad=False)
        set_weight_attrs(weight, output_dim=0, input_dim=1)
        layer.register_parameter("weight", weight)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, layer.weight, bias)


class QuantizationConfig:
    """One quantization format; subclasses register in ``layers/quantization/__init__.py``."""

    #: vLLM's name for the method (``--quantization``)
    name: str = ""
    #: the method can quantize an unquantized checkpoint at load time (``--quantization fp8``)
    online: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "QuantizationConfig":
        """Build from the checkpoint's ``quantization_config`` (``{}`` for an online method)."""
        return cls()

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod | None:
        """The method for the linear layer named ``prefix`` (e.g. ``model.layers.0.mlp.down_proj``);
        None keeps it unquantized."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short description for logs, ``/v1/models`` and ``cache_config_info``."""
        return self.name

    def check_device(self, device: str) -> None:
        """Raise a clear ValueError when ``device`` cannot run this method."""


_current: QuantizationConfig | None = None


@contextlib.contextmanager
def set_quant_config(config: QuantizationConfig | None) -> Iterator[None]:
    """The config the linear layers built inside this block use (``models/loader.build_model``)."""
    global _current
    prev, _current = _current, config
    try:
        yield
    finally:
        _current = prev


def get_quant_config() -> QuantizationConfig | None:
    return _current


def linear_method_for(layer: nn.Module, prefix: str) -> LinearMethod:
    """The current config's method for a layer, or the unquantized one."""
    method = _current.get_linear_method(layer, prefix) if _current is not None else None
    return method or UnquantizedLinearMethod()
