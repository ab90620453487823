"""compressed-tensors W8A8 schemes (what llm-compressor's ``FP8``, ``FP8_DYNAMIC`` and ``W8A8``
presets write): 8-bit weights, 8-bit activations.

- FP8 (``type: float``, format ``float-quantized``): e4m3 weights with per-tensor or per-channel
  ``weight_scale``; activations static per-tensor (``input_scale``) or dynamic per token. Runs on
  the fp8 path of ``layers/fp8.py`` (:class:`Fp8LinearMethod`, ``fp8_checkpoint.py``).
- INT8 (``type: int``, format ``int-quantized`` / ``naive-quantized``): symmetric int8 weights with
  per-channel (or per-tensor) ``weight_scale``; activations symmetric, dynamic per token or static
  per-tensor. Runs on the int8 GEMM (``layers/int8.py``, ``kernels/int8_gemm.py``).

:func:`w8a8_method` recognises a scheme (one ``config_groups`` entry) as W8A8 and returns its
method; it returns None for a scheme without quantized activations (weight-only schemes belong to
another method) and raises a ValueError naming the field for 8-bit-activation schemes we do not
run (W4A8, asymmetric int8 activations, group / block strategies, ...).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedserve.layers.int8 import int8_linear
from pagedserve.layers.quantization.base import LinearMethod
from pagedserve.layers.quantization.fp8_checkpoint import Fp8LinearMethod

#: compressed-tensors formats that store 8-bit values as is (no packing)
W8A8_FORMATS = ("float-quantized", "int-quantized", "naive-quantized")


class Int8LinearMethod(Fp8LinearMethod):
    """int8 ``weight`` [out, in] with per-tensor (one per fused shard) or per-channel
    ``weight_scale``; activations quantized per token, or with the static ``input_scale``."""

    weight_dtype = torch.int8
    dummy_weight_scale, dummy_input_scale = 2e-2 / 127, 16.0 / 127

    def apply(self, layer: nn.Module, x: Any, bias: torch.Tensor | None) -> torch.Tensor:
        return int8_linear(x, layer.weight, layer.weight_scale, bias,
                           input_scale=layer.input_scale if self.static_input else None)

    def accepts_fp8_act(self, layer: nn.Module) -> bool:
        return False  # the fused kernels emit fp8, not int8


def _get(args: dict[str, Any], key: str, default: Any = None) -> Any:
    value = args.get(key, default)
    return default if value is None else value


def _check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{where}: {msg}")


def w8a8_method(scheme: dict[str, Any], fmt: str | None = None, where: str = "quantization_config"
                ) -> LinearMethod | None:
    """The method of one compressed-tensors scheme (``weights`` / ``input_activations`` dicts of a
    ``config_groups`` entry; ``fmt`` the group's or the config's ``format``), None when it has no
    quantized activations."""
    weights, acts = scheme.get("weights"), scheme.get("input_activations")
    if not acts:
        return None
    _check(bool(weights), where, "input_activations without weights quantization are not supported")
    wbits, abits = int(_get(weights, "num_bits", 0)), int(_get(acts, "num_bits", 0))
    wtype, atype = _get(weights, "type", "int"), _get(acts, "type", "int")
    _check(wbits == 8 and abits == 8, where, f"W{wbits}A{abits} ({wtype} weights, {atype} activations) is not "
           "supported; of the schemes with quantized activations only W8A8 (fp8 or int8) is")
    _check(wtype == atype and wtype in ("float", "int"), where,
           f"{wtype} weights with {atype} activations are not supported (W8A8 needs both fp8 or both int8)")
    _check(fmt in (None, *W8A8_FORMATS), where, f"format {fmt!r} is not supported for W8A8 "
           f"(expected one of {', '.join(W8A8_FORMATS)}; sparse formats such as 2:4 are not supported)")
    wstrategy, astrategy = _get(weights, "strategy", "tensor"), _get(acts, "strategy", "tensor")
    _check(wstrategy in ("tensor", "channel"), where, f"weights.strategy={wstrategy!r} is not supported for "
           "W8A8 (tensor or channel; group / block-wise 8-bit weights are not)")
    _check(_get(weights, "symmetric", True), where, "asymmetric 8-bit weights (weights.symmetric=false) are "
           "not supported")
    _check(not _get(weights, "dynamic", False), where, "weights.dynamic=true is not supported")
    _check(not weights.get("actorder"), where,
           f"weights.actorder={weights.get('actorder')!r} is not supported for W8A8")
    _check(_get(acts, "symmetric", True), where, f"asymmetric {atype}8 activations (input_activations.symmetric="
           "false, an input_zero_point) are not supported")
    dynamic = bool(_get(acts, "dynamic", False))
    if dynamic:  # per token; a dynamic per-tensor scheme runs per token too (a finer scale)
        _check(astrategy in ("token", "tensor"), where,
               f"input_activations.strategy={astrategy!r} is not supported (dynamic: token)")
    else:
        _check(astrategy == "tensor", where,
               f"input_activations.strategy={astrategy!r} with dynamic=false is not supported (static: tensor)")
    cls = Fp8LinearMethod if wtype == "float" else Int8LinearMethod
    return cls(per_channel=wstrategy == "channel", static_input=not dynamic)


def describe_w8a8(method: LinearMethod) -> str:
    """``fp8 W8A8 (per-channel weights, dynamic per-token activations)`` etc."""
    kind = "int8" if isinstance(method, Int8LinearMethod) else "fp8"
    assert isinstance(method, Fp8LinearMethod)
    w = "per-channel" if method.per_channel else "per-tensor"
    a = "static per-tensor" if method.static_input else "dynamic per-token"
    return f"{kind} W8A8 ({w} weights, {a} activations)"


__all__ = ["Int8LinearMethod", "W8A8_FORMATS", "describe_w8a8", "w8a8_method"]
