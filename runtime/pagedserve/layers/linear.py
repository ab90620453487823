"""Linear layers that know how to shard themselves across tensor-parallel ranks.

Each parameter carries a ``weight_loader(param, source, shard_id=None)`` that copies its own
slice out of ``source`` — a checkpoint tensor or a lazy safetensors slice, so each rank reads
only the rows or columns it owns.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedserve.distributed.parallel_state import get_tp_rank, get_tp_size, tp_all_reduce
from pagedserve.layers.fp8 import fp8_linear, quantizable, quantize_weight

logger = logging.getLogger(__name__)


def _shape(source: Any) -> list[int]:
    return list(source.get_shape()) if hasattr(source, "get_shape") else list(source.shape)


def _read(source: Any, dim: int, start: int, size: int) -> torch.Tensor:
    """Rows (dim 0) or columns (dim 1) [start, start+size) of a tensor or a safetensors slice."""
    if dim == 0:
        return source[start:start + size]
    return source[:, start:start + size]


def _copy(param: torch.Tensor, value: torch.Tensor) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(f"weight shape {tuple(value.shape)} does not match parameter {tuple(param.shape)}")
    param.data.copy_(value.to(param.dtype))


class LinearBase(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, tp_dim: int | None) -> None:
        super().__init__()
        self.tp_rank, self.tp_size, self.tp_dim = get_tp_rank(), get_tp_size(), tp_dim
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, source: Any, shard_id: Any = None) -> None:
        if self.tp_dim is None or (param.dim() == 1 and self.tp_dim == 1):
            _copy(param, source[:] if hasattr(source, "get_shape") else source)
            return
        size = param.shape[self.tp_dim]
        _copy(param, _read(source, self.tp_dim, self.tp_rank * size, size))

    def quantize_fp8(self) -> None:
        """Replace the loaded weight by fp8 + a per-output-channel scale (``layers/fp8.py``)."""
        q, scale = quantize_weight(self.weight.data)
        self.weight = nn.Parameter(q, requires_grad=False)
        self.register_buffer("weight_scale", scale)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.weight.element_size() == 1:
            return fp8_linear(x, self.weight, self.weight_scale, bias)
        return F.linear(x, self.weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.bias)


class ReplicatedLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias, tp_dim=None)


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; no communication."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        tp = get_tp_size()
        if out_features % tp:
            raise ValueError(f"output size {out_features} is not divisible by tensor_parallel_size {tp}")
        super().__init__(in_features, out_features // tp, bias, tp_dim=0)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections stored as one (e.g. gate and up)."""

    def __init__(self, in_features: int, out_sizes: list[int], bias: bool = False) -> None:
        tp = get_tp_size()
        if any(s % tp for s in out_sizes):
            raise ValueError(f"output sizes {out_sizes} are not divisible by tensor_parallel_size {tp}")
        self.out_sizes = out_sizes
        super().__init__(in_features, sum(out_sizes), bias)

    def weight_loader(self, param: nn.Parameter, source: Any, shard_id: int | None = None) -> None:
        assert shard_id is not None
        size = self.out_sizes[shard_id] // self.tp_size
        offset = sum(self.out_sizes[:shard_id]) // self.tp_size
        _copy(param.data.narrow(0, offset, size), _read(source, 0, self.tp_rank * size, size))


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q/k/v projection; KV heads are replicated when there are fewer of them than ranks."""

    def __init__(self, hidden: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool) -> None:
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
        super().__init__(hidden, out, bias)

    def weight_loader(self, param: nn.Parameter, source: Any, shard_id: str | None = None) -> None:
        assert shard_id in ("q", "k", "v")
        if shard_id == "q":
            offset, size, rank = 0, self.q_size, self.tp_rank
        else:
            offset = self.q_size + (0 if shard_id == "k" else self.kv_size)
            size, rank = self.kv_size, self.tp_rank // self.kv_replicas
        _copy(param.data.narrow(0, offset, size), _read(source, 0, rank * size, size))


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial outputs are summed with an all-reduce."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        tp = get_tp_size()
        if in_features % tp:
            raise ValueError(f"input size {in_features} is not divisible by tensor_parallel_size {tp}")
        super().__init__(in_features // tp, out_features, bias, tp_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matmul(x, self.bias if self.tp_rank == 0 else None)
        return tp_all_reduce(y) if self.tp_size > 1 else y


def quantize_model_fp8(model: nn.Module) -> int:
    """Convert every tensor-parallel linear layer of a loaded model to fp8; returns how many."""
    n = skipped = 0
    for m in model.modules():
        if isinstance(m, LinearBase):
            if quantizable(m.weight):
                m.quantize_fp8()
                n += 1
            else:
                skipped += 1
    if skipped:
        logger.warning("fp8: %d linear layer(s) kept in %s (a dimension is not divisible by 16)",
                       skipped, next(model.parameters()).dtype)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    logger.info("fp8: %d linear layers quantized (per-channel weight scales, per-token activations)", n)
    return n
