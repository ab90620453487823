"""What the 4- and 8-bit weight-only formats share: after loading, each format's method unpacks its
checkpoint tensors into plain integers ``q [N, K]`` (unsigned), ``scales [G, N]``, ``zeros [G, N]``
and an optional act-order ``g_idx``; :func:`repack` turns them into the one canonical layout of
``kernels/wna16_ref.py`` that the Triton kernels read, and :meth:`WNA16LinearMethod.apply` runs them
(the skinny kernel for M <= 64, the tiled one above; on CPU the weight is dequantized once and
multiplied in torch).

Act order: the input features are sorted by group (``perm``, applied to the activations), so that a
layer whose groups are then contiguous and uniform takes the fast path; what stays uneven (the shard
of an act-order row-parallel layer under tensor parallelism, which holds every group's scales) keeps
a sorted per-feature ``g_idx``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pagedserve.kernels.wna16_ref import dequantize, pack_rows
from pagedserve.layers.quantization.base import LinearMethod

logger = logging.getLogger(__name__)

#: the group sizes the checkpoint formats use; others are accepted when they are multiples of 16
GROUP_SIZES = (-1, 32, 64, 128)

#: run the Triton kernels on CPU tensors too (tests, under TRITON_INTERPRET=1: the GPU code path
#: of the engine end to end without a GPU); off, CPU layers multiply the dequantized weight
KERNELS_ON_CPU = False


def check_bits_and_group(method: str, bits: int, group_size: int, allowed_bits: tuple[int, ...] = (4, 8)) -> None:
    if bits not in allowed_bits:
        raise ValueError(f"{method}: quantization_config.bits must be one of "
                         f"{', '.join(map(str, allowed_bits))}, got {bits!r}")
    if group_size not in GROUP_SIZES and not (isinstance(group_size, int) and group_size > 0 and group_size % 16 == 0):
        raise ValueError(f"{method}: quantization_config.group_size must be -1 (per channel) or a positive "
                         f"multiple of 16 (32, 64, 128), got {group_size!r}")


@dataclass
class Unpacked:
    """A layer's quantized weight in plain integers (see the module docstring)."""
    q: torch.Tensor  # [N, K] unsigned, int32
    scales: torch.Tensor  # [G, N]
    zeros: torch.Tensor | None  # [G, N] (integer values) or None: the midpoint 2^(bits-1)
    g_idx: torch.Tensor | None  # [K] group of each input feature (indexes all of ``scales``) or None
    group_size: int  # features per group (the local K for one group per channel)


def _param(t: torch.Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t.contiguous(), requires_grad=False)


def repack(layer: nn.Module, u: Unpacked, bits: int) -> None:
    """Store ``u`` on ``layer`` in the canonical layout: ``wq_packed``, ``wq_scales``, ``wq_zeros``,
    ``wq_g_idx``, ``wq_perm`` (None where not needed) and ``wq_bits`` / ``wq_group_size``."""
    q, scales, zeros, g_idx, group = u.q, u.scales, u.zeros, u.g_idx, u.group_size
    n, k = q.shape
    perm = None
    if g_idx is not None:
        g_idx = g_idx.long()
        if bool((g_idx < 0).any()) or bool((g_idx >= scales.shape[0]).any()):
            raise ValueError(f"{getattr(layer, 'prefix', '')}: g_idx holds a group outside 0..{scales.shape[0] - 1}")
        if bool((g_idx[1:] < g_idx[:-1]).any()):
            perm = torch.argsort(g_idx, stable=True)
            q, g_idx = q[:, perm], g_idx[perm]
        g0 = int(g_idx[0])
        uniform = torch.arange(k, device=g_idx.device) // group + g0
        if k % group == 0 and g0 + k // group <= scales.shape[0] and torch.equal(g_idx, uniform):
            scales = scales[g0:g0 + k // group]
            zeros = zeros[g0:g0 + k // group] if zeros is not None else None
            g_idx = None
    elif scales.shape[0] * group != k:
        raise ValueError(f"{getattr(layer, 'prefix', '')}: {scales.shape[0]} scale groups do not cover "
                         f"{k} input features in groups of {group}")
    if zeros is not None and bool((zeros == (1 << (bits - 1))).all()):
        zeros = None  # symmetric: the kernels use the midpoint as a constant
    layer.wq_packed = _param(pack_rows(q, bits))
    layer.wq_scales = _param(scales)
    layer.wq_zeros = _param(zeros.to(scales.dtype) if zeros is not None else None)
    layer.wq_g_idx = _param(g_idx.to(torch.int32) if g_idx is not None else None)
    layer.wq_perm = _param(perm.to(torch.int32) if perm is not None else None)
    layer.wq_bits, layer.wq_group_size, layer.wq_out = bits, group, n
    layer.wq_dense = None  # CPU: the dequantized weight, made on first use


class WNA16LinearMethod(LinearMethod):
    """Base of the GPTQ, AWQ and compressed-tensors weight-only methods: a subclass registers its
    checkpoint tensors (``create_weights``, names listed in ``checkpoint_params``) and unpacks them
    (``unpack``); loading and running are shared."""

    bits: int = 4
    checkpoint_params: tuple[str, ...] = ()

    def unpack(self, layer: nn.Module) -> Unpacked:
        raise NotImplementedError

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        u = self.unpack(layer)
        for name in self.checkpoint_params:
            delattr(layer, name)
        repack(layer, u, self.bits)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.is_cuda or KERNELS_ON_CPU:
            from pagedserve.kernels.wna16 import wna16_linear

            if layer.wq_perm is not None:
                x2 = x2.index_select(1, layer.wq_perm)
            elif x2.stride(-1) != 1:
                x2 = x2.contiguous()
            y = wna16_linear(x2, layer.wq_packed, layer.wq_scales, layer.wq_zeros, layer.wq_g_idx,
                             layer.wq_bits, layer.wq_group_size, bias)
        else:
            y = F.linear(x2, dense_weight(layer, x2.dtype), bias)
        return y.view(*shape[:-1], layer.wq_out)


def dense_weight(layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The dequantized ``[N, K]`` weight in input-feature order (CPU path; cached)."""
    w = layer.wq_dense
    if w is None or w.dtype != dtype:
        w = dequantize(layer.wq_packed, layer.wq_scales, layer.wq_zeros, layer.wq_g_idx, layer.wq_bits,
                       layer.wq_group_size, dtype)
        if layer.wq_perm is not None:
            dense = torch.empty_like(w)
            dense[:, layer.wq_perm.long()] = w
            w = dense
        layer.wq_dense = w
    return w


def dummy_scales(bits: int):
    """``load_format=dummy``: scales that give weights of about the float dummy's size (0.02)."""
    def fill(t: torch.Tensor, gen: torch.Generator) -> None:
        t.uniform_(0.5, 1.0, generator=gen).mul_(0.02 / (1 << (bits - 1)))
    return fill


def dummy_g_idx(group_size: int):
    """``load_format=dummy``: the plain ``k // group_size`` groups (the unsharded tensor)."""
    def fill(t: torch.Tensor, gen: torch.Generator) -> None:
        t.copy_(torch.arange(t.numel(), device=t.device) // group_size)
    return fill


def describe(method: str, bits: int, group_size: int, sym: bool | None, act_order: bool = False) -> str:
    parts = [f"{bits}-bit", "per channel" if group_size <= 0 else f"group {group_size}"]
    if sym is not None:
        parts.append("sym" if sym else "asym")
    if act_order:
        parts.append("act order")
    return f"{method} ({', '.join(parts)})"


def full_input_size(layer: nn.Module, input_size: int) -> int:
    """The unsharded input features of a layer whose local share is ``input_size``."""
    return input_size * layer.tp_size if getattr(layer, "tp_dim", None) == 1 else input_size


def row_split(layer: nn.Module) -> bool:
    """The layer's input features are split across tensor-parallel ranks."""
    return getattr(layer, "tp_dim", None) == 1 and getattr(layer, "tp_size", 1) > 1


def check_divisible(layer: nn.Module, method: str, what: str, n: int, by: int, why: str) -> None:
    if n % by:
        raise ValueError(f"{method}: {getattr(layer, 'prefix', '') or type(layer).__name__}: {what} {n} is not "
                         f"a multiple of {by} ({why})")


__all__ = ["GROUP_SIZES", "Unpacked", "WNA16LinearMethod", "check_bits_and_group", "check_divisible",
           "dense_weight", "describe", "dummy_g_idx", "dummy_scales", "full_input_size", "repack", "row_split"]
