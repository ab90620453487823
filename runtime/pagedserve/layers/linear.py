"""Linear layers that know how to shard themselves across tensor-parallel ranks.

Each parameter carries a ``weight_loader(param, source, shard_id=None)`` that copies its own
slice out of ``source`` — a checkpoint tensor or a lazy safetensors slice, so each rank reads
only the rows or columns it owns.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedserve.distributed.parallel_state import get_tp_rank, get_tp_size, tp_all_reduce
from pagedserve.layers.quantization.base import LinearMethod, linear_method_for, set_weight_attrs


def _read(source: Any, dim: int, start: int, size: int) -> torch.Tensor:
    """Entries [start, start+size) along ``dim`` (0 or 1) of a tensor or a safetensors slice."""
    if dim == 0:
        return source[start:start + size]
    return source[:, start:start + size]


def _whole(source: Any) -> torch.Tensor:
    return source[...] if hasattr(source, "get_shape") else source  # [...]: a 0-dim scale too


def _copy(param: torch.Tensor, value: torch.Tensor) -> None:
    if tuple(param.shape) != tuple(value.shape):
        if param.numel() == value.numel() == 1:  # a scalar stored as [] or [1]
            value = value.reshape(param.shape)
        else:
            raise ValueError(f"weight shape {tuple(value.shape)} does not match parameter {tuple(param.shape)}")
    param.data.copy_(value.to(param.dtype))


def _packed(param: torch.Tensor, dim: int, n: int) -> int:
    """``n`` logical elements along ``dim`` → entries of ``param`` (see ``set_weight_attrs``)."""
    if getattr(param, "packed_dim", None) == dim:
        factor = param.pack_factor
        if n % factor:
            raise ValueError(f"a shard of {n} features is not a multiple of the pack factor {factor}")
        return n // factor
    return n


class LinearBase(nn.Module):
    """A linear layer whose weights are created and applied by a :class:`LinearMethod`: the model
    dtype's ``[out, in]`` weight, or a quantized layout (``layers/quantization``). ``prefix`` is the
    layer's checkpoint name (``model.layers.0.mlp.down_proj``), which quantization configs match."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp_dim: int | None,
                 prefix: str = "", output_sizes: list[int] | None = None) -> None:
        super().__init__()
        self.tp_rank, self.tp_size, self.tp_dim = get_tp_rank(), get_tp_size(), tp_dim
        self.input_size, self.output_size, self.prefix = in_features, out_features, prefix
        self.lora: Any = None  # layers/lora.LoRALinear when LoRA serving is on: adds its delta to matmul
        self.quant_method: LinearMethod = linear_method_for(self, prefix)
        self.quant_method.create_weights(self, in_features, out_features, output_sizes or [out_features],
                                         torch.get_default_dtype())
        for p in self.parameters(recurse=False):
            if not hasattr(p, "weight_loader"):  # a method may wrap the layer's loader (gptq's g_idx)
                p.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            set_weight_attrs(self.bias, output_dim=0, weight_loader=self.weight_loader)
        else:
            self.register_parameter("bias", None)

    def _split_dim(self, param: torch.Tensor) -> int | None:
        """The dimension of ``param`` split across ranks (None: every rank holds all of it)."""
        if self.tp_dim is None:
            return None
        return getattr(param, "output_dim" if self.tp_dim == 0 else "input_dim", None)

    def weight_loader(self, param: nn.Parameter, source: Any, shard_id: Any = None) -> None:
        dim = self._split_dim(param)
        if dim is None:
            _copy(param, _whole(source))
            return
        size = param.shape[dim]
        _copy(param, _read(source, dim, self.tp_rank * size, size))

    def load_shard(self, param: nn.Parameter, source: Any, index: int, offset: int, size: int, rank: int) -> None:
        """Write fused shard number ``index`` (``size`` output features at ``offset`` of this rank's
        slice, read from the checkpoint's slice ``rank``) into ``param``."""
        if getattr(param, "shard_scalar", False):
            _copy(param.data[index], _whole(source).reshape(()))
            return
        dim = getattr(param, "output_dim", None)
        if dim is None:  # e.g. g_idx: the same for every shard
            _copy(param, _whole(source))
            return
        offset, size = _packed(param, dim, offset), _packed(param, dim, size)
        _copy(param.data.narrow(dim, offset, size), _read(source, dim, rank * size, size))

    def quantize_fp8(self) -> None:
        """Online fp8 for this layer (``--quantization fp8`` builds layers this way; kept for code
        that converts a built model)."""
        from pagedserve.layers.quantization.fp8_online import Fp8OnlineLinearMethod

        self.quant_method = Fp8OnlineLinearMethod()
        self.quant_method.process_weights_after_loading(self)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = self.quant_method.apply(self, x, bias)
        return y if self.lora is None else self.lora.apply(x, y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.bias)


class ReplicatedLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool = False, prefix: str = "") -> None:
        super().__init__(in_features, out_features, bias, tp_dim=None, prefix=prefix)


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; no communication."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, prefix: str = "",
                 output_sizes: list[int] | None = None) -> None:
        tp = get_tp_size()
        if out_features % tp:
            raise ValueError(f"output size {out_features} is not divisible by tensor_parallel_size {tp}")
        super().__init__(in_features, out_features // tp, bias, tp_dim=0, prefix=prefix,
                         output_sizes=[s // tp for s in output_sizes] if output_sizes else None)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections stored as one (e.g. gate and up)."""

    def __init__(self, in_features: int, out_sizes: list[int], bias: bool = False, prefix: str = "") -> None:
        tp = get_tp_size()
        if any(s % tp for s in out_sizes):
            raise ValueError(f"output sizes {out_sizes} are not divisible by tensor_parallel_size {tp}")
        self.out_sizes = out_sizes
        super().__init__(in_features, sum(out_sizes), bias, prefix=prefix, output_sizes=out_sizes)

    def weight_loader(self, param: nn.Parameter, source: Any, shard_id: int | None = None) -> None:
        assert shard_id is not None
        size = self.out_sizes[shard_id] // self.tp_size
        offset = sum(self.out_sizes[:shard_id]) // self.tp_size
        self.load_shard(param, source, shard_id, offset, size, self.tp_rank)


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q/k/v projection; KV heads are replicated when there are fewer of them than ranks."""

    def __init__(self, hidden: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool,
                 prefix: str = "") -> None:
        tp = get_tp_size()
        if num_heads % tp:
            raise ValueError(f"num_attention_heads {num_heads} is not divisible by tensor_parallel_size {tp}")
        if num_kv_heads >= tp and num_kv_heads % tp:
            raise ValueError(f"num_key_value_heads {num_kv_heads} is not divisible by tensor_parallel_size {tp}")
        if num_kv_heads < tp and tp % num_kv_heads:
            raise ValueError(f"tensor_parallel_size {tp} is not a multiple of num_key_value_heads {num_kv_heads}")
        self.head_dim = head_dim
        self.num_heads = num_heads // tp
        self.num_kv_heads = max(1, num_kv_heads // tp)
        self.kv_replicas = max(1, tp // num_kv_heads)
        self.q_size = self.num_heads * head_dim
        self.kv_size = self.num_kv_heads * head_dim
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp
        super().__init__(hidden, out, bias, prefix=prefix,
                         output_sizes=[self.q_size * tp, self.kv_size * tp, self.kv_size * tp])

    def weight_loader(self, param: nn.Parameter, source: Any, shard_id: str | None = None) -> None:
        assert shard_id in ("q", "k", "v")
        if shard_id == "q":
            offset, size, rank = 0, self.q_size, self.tp_rank
        else:
            offset = self.q_size + (0 if shard_id == "k" else self.kv_size)
            size, rank = self.kv_size, self.tp_rank // self.kv_replicas
        self.load_shard(param, source, "qkv".index(shard_id), offset, size, rank)


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial outputs are summed with an all-reduce."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, prefix: str = "") -> None:
        tp = get_tp_size()
        if in_features % tp:
            raise ValueError(f"input size {in_features} is not divisible by tensor_parallel_size {tp}")
        super().__init__(in_features // tp, out_features, bias, tp_dim=1, prefix=prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matmul(x, self.bias if self.tp_rank == 0 else None)
        return tp_all_reduce(y) if self.tp_size > 1 else y


def process_weights_after_loading(model: nn.Module) -> int:
    """Let every linear layer's method repack its loaded weights; returns how many are quantized."""
    n = 0
    for m in model.modules():
        if isinstance(m, LinearBase):
            m.quant_method.process_weights_after_loading(m)
            n += m.quant_method.is_quantized(m)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return n


def quantize_model_fp8(model: nn.Module) -> int:
    """Convert a built model's linear layers to online fp8; returns how many hold fp8 weights."""
    n = 0
    for m in model.modules():
        if isinstance(m, LinearBase):
            m.quantize_fp8()
            n += m.quant_method.accepts_fp8_act(m)
    return n
