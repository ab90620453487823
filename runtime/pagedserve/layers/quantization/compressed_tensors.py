"""compressed-tensors checkpoints (``quant_method: compressed-tensors``, what llm-compressor writes).

``config_groups`` maps group names to schemes (``targets``: ``Linear``, module names or ``re:``
patterns; ``weights`` / ``input_activations`` quantization args); ``ignore`` lists modules kept
unquantized. Each linear layer gets the method of the first group that targets it, built by the
first of :data:`SCHEME_METHODS` that recognises the scheme (the W8A8 schemes:
``compressed_tensors_w8a8.py``). Every group is checked when the config is read, so an unsupported
scheme fails at start-up with a message naming it. Sparse (2:4) and transformed (SpinQuant / QuIP)
checkpoints are rejected.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from pagedserve.layers.fp8 import check_fp8_device
from pagedserve.layers.int8 import check_int8_device
from pagedserve.layers.quantization.base import LinearMethod, QuantizationConfig
from pagedserve.layers.quantization.fp8_checkpoint import Fp8LinearMethod
from pagedserve.layers.quantization.compressed_tensors_w8a8 import Int8LinearMethod, describe_w8a8, w8a8_method
from pagedserve.layers.quantization.layer_names import layer_in, matches_ct

#: scheme dict, format, where (for messages) → its method, or None when the builder does not handle it
SchemeMethod = Callable[[dict[str, Any], "str | None", str], "LinearMethod | None"]
SCHEME_METHODS: list[SchemeMethod] = [w8a8_method]


def scheme_method(scheme: dict[str, Any], fmt: str | None, where: str) -> LinearMethod:
    for build in SCHEME_METHODS:
        method = build(scheme, fmt, where)
        if method is not None:
            return method
    w = scheme.get("weights") or {}
    raise ValueError(f"{where}: the scheme ({w.get('num_bits')}-bit {w.get('type')} weights, strategy "
                     f"{w.get('strategy')!r}, format {fmt!r}) is not supported")


def _target_matches(name: str, target: str) -> bool:
    return target == "Linear" or matches_ct(name, target)


class CompressedTensorsConfig(QuantizationConfig):
    name = "compressed-tensors"

    def __init__(self, groups: list[tuple[str, list[str], dict[str, Any], str | None]], ignore: list[str]) -> None:
        self.groups, self.ignore = groups, ignore
        self.methods = {g: scheme_method(scheme, fmt, f"quantization_config.config_groups.{g}")
                        for g, _, scheme, fmt in groups}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CompressedTensorsConfig":
        sparsity = config.get("sparsity_config") or {}
        if sparsity.get("format") not in (None, "dense"):
            raise ValueError(f"quantization_config.sparsity_config: sparse compressed-tensors checkpoints "
                             f"(format {sparsity.get('format')!r}, e.g. 2:4) are not supported")
        if config.get("transform_config"):
            raise ValueError("quantization_config.transform_config: transformed checkpoints (SpinQuant / QuIP "
                             "rotations) are not supported")
        raw = config.get("config_groups") or {}
        if not raw:
            raise ValueError("quantization_config.config_groups is empty or missing")
        groups = []
        for name, g in raw.items():
            if g.get("output_activations"):
                raise ValueError(f"quantization_config.config_groups.{name}.output_activations: output "
                                 "quantization is not supported")
            groups.append((name, list(g.get("targets") or []), g, g.get("format") or config.get("format")))
        return cls(groups, list(config.get("ignore") or []))

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod | None:
        if layer_in(prefix, self.ignore, matches_ct):
            return None
        for name, targets, _, _ in self.groups:
            if layer_in(prefix, targets, _target_matches):
                return self.methods[name]  # methods keep their per-layer state on the layer
        return None

    def describe(self) -> str:
        kinds = sorted({describe_w8a8(m) if isinstance(m, Fp8LinearMethod) else type(m).__name__
                        for m in self.methods.values()})
        return f"compressed-tensors ({'; '.join(kinds)})"

    def check_device(self, device: str) -> None:
        for m in self.methods.values():
            if isinstance(m, Int8LinearMethod):
                check_int8_device(device)
            elif isinstance(m, Fp8LinearMethod):
                check_fp8_device(device)


__all__ = ["CompressedTensorsConfig", "SCHEME_METHODS", "scheme_method"]
