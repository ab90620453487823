"""compressed-tensors W4A16 / W8A16 ``pack-quantized`` (integer weights, activations in the model dtype).

Per linear layer (``compressed_tensors.compressors.pack_quantized``):

- ``weight_packed`` int32 ``[N, K * bits / 32]``: packed along the input features, value ``i`` of a
  word in bits ``[i*bits, (i+1)*bits)``, each stored as the signed value plus ``2^(bits-1)``;
- ``weight_scale`` ``[N, G]`` (``G = K / group_size``, or 1 per channel);
- ``weight_zero_point`` int32 ``[N * bits / 32, G]`` (asymmetric only): packed along the output
  features, offset like the weights;
- ``weight_shape`` int64 ``[2]``: the unpacked ``[N, K]``;
- ``weight_g_idx`` int32 ``[K]`` (``actorder: group``): the group of each input feature.

``W[n, k] = (q[n, k] - zp[n, g(k)]) * scale[n, g(k)]``; the offsets cancel, so the unsigned stored
values go straight into the canonical layout.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from pagedserve.kernels.wna16_ref import unpack_rows
from pagedserve.layers.quantization.base import LinearMethod, set_weight_attrs
from pagedserve.layers.quantization.wna16 import (Unpacked, WNA16LinearMethod, check_bits_and_group,
                                                  check_divisible, dummy_g_idx, dummy_scales, full_input_size,
                                                  row_split)

if TYPE_CHECKING:  # compressed_tensors.py imports this module (the scheme dispatch)
    from pagedserve.layers.quantization.compressed_tensors import CTScheme


def wna16_method(scheme: CTScheme) -> LinearMethod | None:
    """The method for a weight-only integer ``pack-quantized`` scheme; None for other schemes."""
    w = scheme.weights or {}
    if scheme.format != "pack-quantized" or scheme.input_activations is not None or w.get("type", "int") != "int":
        return None
    bits, strategy = w.get("num_bits"), w.get("strategy")
    if strategy not in ("group", "channel"):
        raise ValueError(f"compressed-tensors: config_groups.{scheme.name}.weights.strategy must be group or channel "
                         f"for pack-quantized weights, got {strategy!r}")
    group = w.get("group_size") if strategy == "group" else -1
    check_bits_and_group(f"compressed-tensors (config_groups.{scheme.name}.weights)", bits, group)
    actorder = w.get("actorder")
    if actorder not in (None, "group", "weight", "static", "dynamic"):
        raise ValueError(f"compressed-tensors: config_groups.{scheme.name}.weights.actorder {actorder!r} is not known")
    return CompressedTensorsWNA16(bits, group, bool(w.get("symmetric", True)), actorder == "group")


class CompressedTensorsWNA16(WNA16LinearMethod):
    def __init__(self, bits: int, group_size: int, symmetric: bool, has_g_idx: bool) -> None:
        self.bits, self.group_size, self.symmetric, self.has_g_idx = bits, group_size, symmetric, has_g_idx
        self.checkpoint_params = ("weight_packed", "weight_scale", "weight_shape") \
            + (() if symmetric else ("weight_zero_point",)) + (("weight_g_idx",) if has_g_idx else ())

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int,
                       output_sizes: list[int], params_dtype: torch.dtype) -> None:
        pf, name = 32 // self.bits, "compressed-tensors"
        k_full = full_input_size(layer, input_size)
        check_divisible(layer, name, "input size", input_size, pf, f"{pf} values per packed word")
        channelwise = self.group_size == -1
        self.group = input_size if channelwise else self.group_size
        full_groups = self.has_g_idx and row_split(layer) and not channelwise
        if not channelwise:
            check_divisible(layer, name, "input size", k_full, self.group_size, "group_size")
            if not full_groups:
                check_divisible(layer, name, "input size per rank", input_size, self.group_size, "group_size")
        if not self.symmetric:
            for s in output_sizes:
                check_divisible(layer, name, "output size", s, pf, "zero points are packed along the outputs")
        groups = 1 if channelwise else (k_full if full_groups else input_size) // self.group_size
        group_dim = None if channelwise or full_groups else 1

        def param(pname, shape, dtype, **attrs) -> None:
            p = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
            set_weight_attrs(p, **attrs)
            layer.register_parameter(pname, p)

        param("weight_packed", (output_size, input_size // pf), torch.int32, output_dim=0, input_dim=1,
              packed_dim=1, pack_factor=pf)
        param("weight_scale", (output_size, groups), params_dtype, output_dim=0, input_dim=group_dim,
              dummy_init=dummy_scales(self.bits))
        param("weight_shape", (2,), torch.int64)
        if not self.symmetric:
            param("weight_zero_point", (output_size // pf, groups), torch.int32, output_dim=0, packed_dim=0,
                  pack_factor=pf, input_dim=group_dim)
        if self.has_g_idx:
            param("weight_g_idx", (input_size,), torch.int32, input_dim=0,
                  dummy_init=dummy_g_idx(self.group_size if not channelwise else k_full))

    def unpack(self, layer: nn.Module) -> Unpacked:
        q = unpack_rows(layer.weight_packed.data, self.bits)  # [N, K], signed + 2^(bits-1)
        zeros = None
        if not self.symmetric:
            zeros = unpack_rows(layer.weight_zero_point.data.t().contiguous(), self.bits).float()  # [G, N]
        g_idx = layer.weight_g_idx.data if self.has_g_idx and self.group_size != -1 else None
        return Unpacked(q, layer.weight_scale.data.t(), zeros, g_idx, self.group)
