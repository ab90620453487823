"""compressed-tensors checkpoints (what llm-compressor writes, ``quant_method: compressed-tensors``).

``quantization_config`` holds ``config_groups``: schemes, each with ``targets`` (``Linear``, module
names or ``re:`` regular expressions), ``weights`` / ``input_activations`` arguments (``num_bits``,
``type`` int or float, ``symmetric``, ``strategy`` tensor / channel / group / token, ``group_size``,
``dynamic``, ``actorder``) and a ``format``; ``ignore`` lists modules kept unquantized. This module
finds each linear layer's scheme (a fused layer's checkpoint parts, q/k/v or gate/up, must agree)
and hands it to the method that runs it: :func:`method_for_scheme`.

The methods: W4A16 / W8A16 ``pack-quantized`` (``compressed_tensors_wna16.py``) and the W8A8 schemes,
fp8 and int8 (``compressed_tensors_w8a8.py``). Every group is checked when the config is read, so an
unsupported scheme fails at start-up with a message naming it; sparse (2:4) and transformed
(SpinQuant / QuIP) checkpoints are rejected.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pagedserve.layers.fp8 import check_fp8_device
from pagedserve.layers.int8 import check_int8_device
from pagedserve.layers.quantization.base import LinearMethod, QuantizationConfig
from pagedserve.layers.quantization.compressed_tensors_w8a8 import Int8LinearMethod, describe_w8a8, w8a8_method
from pagedserve.layers.quantization.fp8_checkpoint import Fp8LinearMethod
from pagedserve.layers.quantization.layer_names import checkpoint_names, layer_in, matches_ct



@dataclass
class CTScheme:
    """One entry of ``config_groups``."""
    name: str
    targets: list[str]
    weights: dict[str, Any] | None
    input_activations: dict[str, Any] | None
    format: str
    extra: dict[str, Any] = field(default_factory=dict)


def _matches(name: str, pattern: str) -> bool:
    return pattern == "Linear" or matches_ct(name, pattern)


def method_for_scheme(scheme: CTScheme, prefix: str) -> LinearMethod:
    """The linear method running ``scheme``, or a ValueError naming what is not supported."""
    from pagedserve.layers.quantization.compressed_tensors_wna16 import wna16_method

    method = wna16_method(scheme)
    if method is not None:
        return method
    method = w8a8_method({"weights": scheme.weights, "input_activations": scheme.input_activations, **scheme.extra},
                         scheme.format, f"quantization_config.config_groups.{scheme.name}")
    if method is not None:
        return method
    w, a = scheme.weights or {}, scheme.input_activations
    raise ValueError(
        f"compressed-tensors: {prefix}: scheme {scheme.name!r} (format {scheme.format!r}, weights "
        f"{w.get('num_bits')}-bit {w.get('type')} {w.get('strategy')}, input activations "
        f"{'none' if a is None else str(a.get('num_bits')) + '-bit ' + str(a.get('type'))}) is not supported")


class CompressedTensorsConfig(QuantizationConfig):
    name = "compressed-tensors"

    def __init__(self, schemes: list[CTScheme], ignore: list[str]) -> None:
        self.schemes, self.ignore = schemes, ignore
        self.methods: dict[str, LinearMethod] = {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CompressedTensorsConfig":
        groups = config.get("config_groups")
        if not isinstance(groups, dict) or not groups:
            raise ValueError("compressed-tensors: quantization_config.config_groups is missing or empty")
        default_fmt = config.get("format") or "dense"
        sparsity = config.get("sparsity_config") or {}
        if sparsity.get("format") not in (None, "dense"):
            raise ValueError(f"quantization_config.sparsity_config: sparse compressed-tensors checkpoints "
                             f"(format {sparsity.get('format')!r}, e.g. 2:4) are not supported")
        if config.get("transform_config"):
            raise ValueError("compressed-tensors: transforms (quantization_config.transform_config) are not supported")
        schemes = []
        for name, g in groups.items():
            if g.get("output_activations"):
                raise ValueError(f"quantization_config.config_groups.{name}.output_activations: output "
                                 "quantization is not supported")
            targets = g.get("targets") or []
            if not targets:
                raise ValueError(f"compressed-tensors: config_groups.{name}.targets is empty")
            schemes.append(CTScheme(name, list(targets), g.get("weights"), g.get("input_activations"),
                                    g.get("format") or default_fmt,
                                    {k: v for k, v in g.items() if k not in ("targets", "weights",
                                                                             "input_activations", "format")}))
        self = cls(schemes, list(config.get("ignore") or []))
        self.methods = {sc.name: method_for_scheme(sc, f"config_groups.{sc.name}") for sc in schemes
                        if sc.weights is not None}  # checked at start-up
        return self

    def scheme_for(self, prefix: str) -> CTScheme | None:
        """The scheme of the layer named ``prefix`` (None: unquantized)."""
        found: list[CTScheme | None] = []
        if layer_in(prefix, self.ignore, matches_ct):  # a list naming only some fused shards is an error
            return None
        for name in checkpoint_names(prefix):
            found.append(next((s for s in self.schemes if any(_matches(name, t) for t in s.targets)), None))
        if any(f is not found[0] for f in found):
            raise ValueError(f"compressed-tensors: the parts of {prefix} ({', '.join(checkpoint_names(prefix))}) "
                             "are quantized differently; they must share one scheme to be fused")
        return found[0]

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod | None:
        scheme = self.scheme_for(prefix)
        if scheme is None or scheme.weights is None:
            return None
        return method_for_scheme(scheme, prefix)

    def describe(self) -> str:
        parts = []
        for s in self.schemes:
            if isinstance(self.methods.get(s.name), Fp8LinearMethod):
                parts.append(describe_w8a8(self.methods[s.name]))
                continue
            w = s.weights or {}
            a = s.input_activations
            desc = f"w{w.get('num_bits')}a{a.get('num_bits') if a else 16}"
            if w.get("strategy") == "group":
                desc += f" group {w.get('group_size')}"
            parts.append(f"{s.format} {desc}")
        return f"compressed-tensors ({'; '.join(parts)})"

    def check_device(self, device: str) -> None:
        for m in self.methods.values():
            if isinstance(m, Int8LinearMethod):
                check_int8_device(device)
            elif isinstance(m, Fp8LinearMethod):
                check_fp8_device(device)
