"""GPTQ checkpoints (AutoGPTQ / GPTQModel, ``quant_method: gptq``), 4 or 8 bits.

Per linear layer, ``P = 32 / bits`` values per int32 word, lowest bits first:

- ``qweight`` int32 ``[K / P, N]``: packed along the input features (word ``r`` holds ``r*P .. r*P+P-1``);
- ``qzeros`` int32 ``[G, N / P]``: packed along the output features; ``checkpoint_format: gptq``
  (v1) stores each zero minus one (read back as ``stored + 1``, as AutoGPTQ's kernels do), ``gptq_v2``
  the zero itself;
- ``scales`` ``[G, N]`` (fp16);
- ``g_idx`` int32 ``[K]``: the group of each input feature (``k // group_size`` unless ``desc_act``).

``W[n, k] = (q[k, n] - zero[g_idx[k], n]) * scales[g_idx[k], n]``. Under tensor parallelism a
row-parallel act-order layer keeps every group's scales and zeros (its input features may belong
to any group); all others split them with the weight.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedserve.kernels.wna16_ref import unpack_rows
from pagedserve.layers.quantization.base import LinearMethod, QuantizationConfig, set_weight_attrs
from pagedserve.layers.quantization.wna16 import (Unpacked, WNA16LinearMethod, check_bits_and_group,
                                                  check_divisible, describe, dummy_g_idx, dummy_scales,
                                                  full_input_size, row_split)


class GPTQConfig(QuantizationConfig):
    name = "gptq"

    def __init__(self, bits: int = 4, group_size: int = 128, desc_act: bool = False, sym: bool = True,
                 checkpoint_format: str = "gptq") -> None:
        check_bits_and_group("gptq", bits, group_size)
        if checkpoint_format not in ("gptq", "gptq_v2"):
            raise ValueError(f"gptq: quantization_config.checkpoint_format must be gptq (v1) or gptq_v2, "
                             f"got {checkpoint_format!r}")
        self.bits, self.group_size, self.desc_act, self.sym = bits, group_size, bool(desc_act), bool(sym)
        self.checkpoint_format = checkpoint_format

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "GPTQConfig":
        if config.get("lm_head"):
            raise ValueError("gptq: a quantized lm_head (quantization_config.lm_head) is not supported")
        if config.get("dynamic"):
            raise ValueError("gptq: per-module overrides (quantization_config.dynamic) are not supported")
        fmt = config.get("checkpoint_format") or config.get("format") or "gptq"
        return cls(bits=config.get("bits", 4), group_size=config.get("group_size", 128),
                   desc_act=config.get("desc_act", False), sym=config.get("sym", True),
                   checkpoint_format=str(fmt).lower())

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod:
        return GPTQLinearMethod(self)

    def describe(self) -> str:
        return describe("gptq", self.bits, self.group_size, self.sym, self.desc_act)


def _shared_g_idx_loader(layer: nn.Module):
    """A fused layer (q/k/v, gate/up) holds one ``g_idx`` for all its parts: GPTQ gives layers that
    read the same input the same act order. Loading a part whose ``g_idx`` differs is an error."""
    loaded: list = []

    def load(param: nn.Parameter, source, shard_id=None) -> None:
        before = param.data.clone() if loaded else None
        layer.weight_loader(param, source, shard_id)
        if before is not None and not torch.equal(before, param.data):
            raise ValueError(f"gptq: {layer.prefix}: the fused parts {loaded + [shard_id]} have different g_idx "
                             "(act orders); they must share one to be fused")
        loaded.append(shard_id)

    return load


class GPTQLinearMethod(WNA16LinearMethod):
    checkpoint_params = ("qweight", "qzeros", "scales", "g_idx")

    def __init__(self, config: GPTQConfig) -> None:
        self.config, self.bits = config, config.bits

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int,
                       output_sizes: list[int], params_dtype: torch.dtype) -> None:
        c, pf = self.config, 32 // self.config.bits
        k_full = full_input_size(layer, input_size)
        check_divisible(layer, "gptq", "input size", input_size, pf, f"{pf} values per packed word")
        for s in output_sizes:
            check_divisible(layer, "gptq", "output size", s, pf, "zeros are packed along the outputs")
        channelwise = c.group_size == -1
        self.group = input_size if channelwise else c.group_size
        if not channelwise:
            check_divisible(layer, "gptq", "input size", k_full, c.group_size, "group_size")
        # an act-order row-parallel shard may hold features of any group: it keeps all of them
        full_groups = c.desc_act and row_split(layer) and not channelwise
        if not channelwise and not full_groups:
            check_divisible(layer, "gptq", "input size per rank", input_size, c.group_size, "group_size")
        groups = 1 if channelwise else (k_full if full_groups else input_size) // c.group_size
        group_dim = None if channelwise or full_groups else 0
        self.global_groups = full_groups

        def param(shape, dtype, **attrs) -> nn.Parameter:
            p = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
            set_weight_attrs(p, **attrs)
            return p

        layer.qweight = param((input_size // pf, output_size), torch.int32, input_dim=0, output_dim=1,
                              packed_dim=0, pack_factor=pf)
        layer.qzeros = param((groups, output_size // pf), torch.int32, input_dim=group_dim, output_dim=1,
                             packed_dim=1, pack_factor=pf)
        layer.scales = param((groups, output_size), torch.float16, input_dim=group_dim, output_dim=1,
                             dummy_init=dummy_scales(c.bits))
        layer.g_idx = param((input_size,), torch.int32, input_dim=0,
                            dummy_init=dummy_g_idx(k_full if channelwise else c.group_size))
        if len(output_sizes) > 1:
            layer.g_idx.weight_loader = _shared_g_idx_loader(layer)

    def unpack(self, layer: nn.Module) -> Unpacked:
        c = self.config
        q = unpack_rows(layer.qweight.data.t().contiguous(), c.bits)  # [N, K]
        zeros = unpack_rows(layer.qzeros.data, c.bits)  # [G, N]
        if c.checkpoint_format == "gptq":
            zeros = zeros + 1
        g_idx = layer.g_idx.data
        if not c.desc_act or c.group_size == -1:
            first = layer.tp_rank * q.shape[1] if row_split(layer) and c.group_size != -1 else 0
            expect = (torch.arange(q.shape[1], device=g_idx.device) + first) // self.group
            if c.group_size != -1 and not torch.equal(g_idx.long(), expect):
                raise ValueError(f"gptq: {layer.prefix}: g_idx is not k // group_size but desc_act is false "
                                 "(quantization_config.desc_act)")
            g_idx = None
        return Unpacked(q, layer.scales.data, zeros.to(torch.float32), g_idx, self.group)
