"""Weight-only integer quantization (W4A16 / W8A16): the canonical layout and its torch reference.

Every 4- or 8-bit weight-only format (GPTQ, AWQ, compressed-tensors pack-quantized) is repacked once
at load into one layout, the one the Triton kernels of ``kernels/wna16.py`` read:

- ``qweight`` int32 ``[N, K * bits / 32]``: row ``n`` holds output feature ``n``; word ``c`` holds
  input features ``c * P .. c * P + P - 1`` (``P = 32 / bits``), feature ``c * P + i`` in bits
  ``[i * bits, (i + 1) * bits)``, unsigned (0..15 or 0..255);
- ``scales`` ``[G, N]`` in the model dtype, one row per group;
- ``zeros`` ``[G, N]`` in the model dtype (integer values) or None: the symmetric midpoint
  ``2^(bits-1)``;
- ``g_idx`` int32 ``[K]`` or None: the group of each input feature when groups are not the uniform
  ``k // group_size`` (act-order layers split across tensor-parallel ranks); sorted;
- ``perm`` int32 ``[K]`` or None: the input features in the order the weight columns are stored
  (act order), i.e. ``y = x[:, perm] @ W^T``.

``W[n, k] = (q[n, k] - zeros[g(k), n]) * scales[g(k), n]``, ``g(k) = g_idx[k]`` or ``k // group_size``.
"""
from __future__ import annotations

import sys

import torch

assert sys.byteorder == "little", "the packed layouts are read byte-wise (little-endian)"


def pack_factor(bits: int) -> int:
    return 32 // bits


def pack_rows(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned integers ``[R, C]`` (C a multiple of 32/bits) → int32 ``[R, C * bits / 32]``,
    consecutive values of a row in consecutive bit fields of a word (lowest bits first). Built
    byte-wise: on a little-endian machine (x86, ARM, the GPU) byte ``j`` of a word is bits 8j..8j+7."""
    p = pack_factor(bits)
    r, c = q.shape
    if c % p:
        raise ValueError(f"cannot pack {c} values into words of {p}")
    b = q.to(torch.uint8)
    if bits == 4:
        b = b.view(r, c // 2, 2)
        b = b[..., 0] | (b[..., 1] << 4)
    return b.contiguous().view(torch.int32)


def unpack_rows(packed: torch.Tensor, bits: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Inverse of :func:`pack_rows`: int32 ``[R, W]`` → unsigned values ``[R, W * 32 / bits]`` (int32).
    ``order[j]``: the bit field holding value ``j`` of a word (default ``j``; AWQ interleaves)."""
    r, w = packed.shape
    b = packed.contiguous().view(torch.uint8)  # [R, 4W], little-endian bytes
    if bits == 4:
        b = torch.stack((b & 0xF, b >> 4), dim=-1).view(r, -1)
    if order is not None:
        b = b.view(r, w, -1)[:, :, list(order)].reshape(r, -1)
    return b.to(torch.int32)


def group_index(k: int, group_size: int, g_idx: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    if g_idx is not None:
        return g_idx.long()
    return torch.arange(k, device=device) // group_size


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               g_idx: torch.Tensor | None, bits: int, group_size: int,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """The canonical layout → the weight ``[N, K]`` (columns in stored order; see ``perm``),
    computed in fp32 and returned in ``dtype`` (default: the scales' dtype)."""
    q = unpack_rows(qweight, bits).float()
    g = group_index(q.shape[1], group_size, g_idx, q.device)
    s = scales.float()[g].t()  # [N, K]
    z = zeros.float()[g].t() if zeros is not None else float(1 << (bits - 1))
    return ((q - z) * s).to(dtype or scales.dtype)


def wna16_linear_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                     g_idx: torch.Tensor | None, perm: torch.Tensor | None, bits: int, group_size: int,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [M, K] @ W^T (+ bias)`` on the dequantized weight, in x's dtype."""
    if perm is not None:
        x = x.index_select(-1, perm.long())
    w = dequantize(qweight, scales, zeros, g_idx, bits, group_size, x.dtype)
    return torch.nn.functional.linear(x, w, bias)


__all__ = ["dequantize", "group_index", "pack_factor", "pack_rows", "unpack_rows", "wna16_linear_ref"]
