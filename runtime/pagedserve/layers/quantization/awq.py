"""AWQ checkpoints (AutoAWQ, ``quant_method: awq``, ``version: gemm``), 4 bits, always with zeros.

Per linear layer:

- ``qweight`` int32 ``[K, N / 8]``: packed along the output features, eight per word in AWQ's
  interleaved order: nibble ``i`` of a word holds output ``8c + AWQ_ORDER[i]`` (the order its CUDA
  kernel dequantizes in);
- ``qzeros`` int32 ``[K / group_size, N / 8]``: the zeros, packed the same way (not offset);
- ``scales`` ``[K / group_size, N]`` (fp16).

``W[n, k] = (q[k, n] - zero[k // group_size, n]) * scales[k // group_size, n]``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedserve.kernels.wna16_ref import unpack_rows
from pagedserve.layers.quantization.base import LinearMethod, QuantizationConfig, set_weight_attrs
from pagedserve.layers.quantization.wna16 import (Unpacked, WNA16LinearMethod, check_bits_and_group,
                                                  check_divisible, describe, dummy_scales, full_input_size)

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i holds column AWQ_ORDER[i] of its 8
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # column j sits in nibble AWQ_REVERSE_ORDER[j]


def awq_columns(n: int, device: torch.device) -> torch.Tensor:
    """For each output column, its position among the nibbles unpacked in word order."""
    return (torch.arange(n, device=device).view(-1, 8)[:, list(AWQ_REVERSE_ORDER)] // 8 * 8
            + torch.tensor(AWQ_REVERSE_ORDER, device=device)).view(-1)


def unpack_awq_t(packed: torch.Tensor) -> torch.Tensor:
    """int32 ``[R, C / 8]`` in AWQ's order → unsigned nibbles transposed, ``[C, R]`` in column order
    (rows gathered after the transpose: whole-row copies)."""
    v = unpack_rows(packed, 4).t()
    return v.index_select(0, awq_columns(v.shape[0], v.device))


class AWQConfig(QuantizationConfig):
    name = "awq"

    def __init__(self, bits: int = 4, group_size: int = 128, zero_point: bool = True,
                 modules_to_not_convert: list[str] | None = None) -> None:
        check_bits_and_group("awq", bits, group_size, allowed_bits=(4,))
        self.bits, self.group_size, self.zero_point = bits, group_size, zero_point
        self.modules_to_not_convert = list(modules_to_not_convert or [])

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AWQConfig":
        version = str(config.get("version", "gemm")).lower()
        if version != "gemm":
            raise ValueError(f"awq: quantization_config.version {version!r} is not supported (only the GEMM "
                             "layout, version 'gemm')")
        return cls(bits=config.get("bits", config.get("w_bit", 4)),
                   group_size=config.get("group_size", config.get("q_group_size", 128)),
                   zero_point=config.get("zero_point", True),
                   modules_to_not_convert=config.get("modules_to_not_convert"))

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod | None:
        if any(m in prefix for m in self.modules_to_not_convert):
            return None
        return AWQLinearMethod(self)

    def describe(self) -> str:
        return describe("awq", self.bits, self.group_size, None)


class AWQLinearMethod(WNA16LinearMethod):
    checkpoint_params = ("qweight", "qzeros", "scales")

    def __init__(self, config: AWQConfig) -> None:
        self.config, self.bits = config, config.bits

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int,
                       output_sizes: list[int], params_dtype: torch.dtype) -> None:
        c = self.config
        for s in output_sizes:
            check_divisible(layer, "awq", "output size", s, 8, "eight values per packed word")
        channelwise = c.group_size == -1
        self.group = input_size if channelwise else c.group_size
        if not channelwise:
            check_divisible(layer, "awq", "input size", full_input_size(layer, input_size), c.group_size,
                            "group_size")
            check_divisible(layer, "awq", "input size per rank", input_size, c.group_size, "group_size")
        groups = 1 if channelwise else input_size // c.group_size
        group_dim = None if channelwise else 0

        def param(shape, dtype, **attrs) -> nn.Parameter:
            p = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
            set_weight_attrs(p, **attrs)
            return p

        layer.qweight = param((input_size, output_size // 8), torch.int32, input_dim=0, output_dim=1,
                              packed_dim=1, pack_factor=8)
        layer.qzeros = param((groups, output_size // 8), torch.int32, input_dim=group_dim, output_dim=1,
                             packed_dim=1, pack_factor=8)
        layer.scales = param((groups, output_size), torch.float16, input_dim=group_dim, output_dim=1,
                             dummy_init=dummy_scales(c.bits))

    def unpack(self, layer: nn.Module) -> Unpacked:
        q = unpack_awq_t(layer.qweight.data)  # [N, K]
        zeros = unpack_awq_t(layer.qzeros.data).t()  # [G, N]
        return Unpacked(q, layer.scales.data, zeros.to(torch.float32), None, self.group)
