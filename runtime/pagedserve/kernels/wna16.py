"""Dequantising matrix products for 4- and 8-bit weight-only quantization (W4A16, W8A16).

``y[M, N] = x[M, K] @ W^T (+ bias)`` with ``W`` in the canonical layout of ``kernels/wna16_ref.py``
(int32 words of 8 (4-bit) or 4 (8-bit) consecutive input features per output row, scales and
zeros ``[G, N]``). Both kernels unpack a ``[BLOCK_N, BLOCK_K]`` weight tile in registers
(``_dequant_tile``: one word load per ``32 / bits`` values, shifts and masks, ``(q - z) * s`` in
fp32, rounded to the activation dtype) and feed it to the tensor cores:

- ``wna16_gemv``, decode (M <= 64): like ``kernels/gemv.py``, a program owns ``BLOCK_N`` output
  features and computes ``w_tile @ x_tile^T`` (the batch padded to 16..64 is the short side);
  optional split-K (``split_k`` programs per column block, fp32 partials summed by one small kernel: the
  weight read of a 4-bit layer is small, so narrow layers need the extra programs to fill the GPU);
- ``wna16_gemm``, prefill: a tiled GEMM over ``(BLOCK_M, BLOCK_N)`` output tiles, grouped launch
  order for L2 reuse of the weight tiles;
- ``wna16_dequantize``: the whole weight in 16 bits, for large M (``DENSE_MIN_M``), where cuBLAS on
  the dequantized weight beats dequantizing every weight tile once per row block.

Scales: when a K tile lies inside one group (``group_size % BLOCK_K == 0``, no ``g_idx``) one scale
(and zero) per row is loaded per tile; otherwise (small groups, act-order ``g_idx``) they are
gathered per element, which the L1 cache serves. Symmetric layers take the midpoint as a constant.
Reference: ``kernels.wna16_ref.wna16_linear_ref``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.kernels.utils import cdiv, dot_precision, num_sms
from pagedserve.kernels.wna16_gemv import FMA_MAX_M, fma_gemv_config, splitk_partials, splitk_reduce, wna16_fma_gemv

MAX_M = 64  # the skinny kernel's largest M


@triton.jit
def _dequant_tile(qw_ptr, s_ptr, z_ptr, gidx_ptr, offs_n, mask_n, k0, K, stride_qn, stride_s,
                  BITS: tl.constexpr, PACK: tl.constexpr, GROUP: tl.constexpr, SCALAR_GROUP: tl.constexpr,
                  HAS_ZERO: tl.constexpr, HAS_GIDX: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """The fp32 weight tile ``[BLOCK_N, BLOCK_K]`` of input features ``k0 ..``."""
    offs_w = k0 // PACK + tl.arange(0, BLOCK_K // PACK)
    mask_w = offs_w < K // PACK
    q = tl.load(qw_ptr + offs_n[:, None].to(tl.int64) * stride_qn + offs_w[None, :],
                mask=mask_n[:, None] & mask_w[None, :], other=0)
    shifts = tl.arange(0, PACK) * BITS
    q = (q[:, :, None] >> shifts[None, None, :]) & ((1 << BITS) - 1)
    q = tl.reshape(q, (BLOCK_N, BLOCK_K)).to(tl.float32)
    if SCALAR_GROUP:
        g = k0 // GROUP
        s = tl.load(s_ptr + g * stride_s + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
        if HAS_ZERO:
            z = tl.load(z_ptr + g * stride_s + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
        else:
            z = (1 << (BITS - 1)) * 1.0
    else:
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        if HAS_GIDX:
            g = tl.load(gidx_ptr + offs_k, mask=mask_k, other=0)
        else:
            g = offs_k // GROUP
        sp = g[None, :].to(tl.int64) * stride_s + offs_n[:, None]
        m2 = mask_n[:, None] & mask_k[None, :]
        s = tl.load(s_ptr + sp, mask=m2, other=0.0).to(tl.float32)
        if HAS_ZERO:
            z = tl.load(z_ptr + sp, mask=m2, other=0.0).to(tl.float32)
        else:
            z = (1 << (BITS - 1)) * 1.0
    return (q - z) * s


@triton.jit
def _split_dots(acc, x_ptr, qw_ptr, s_ptr, z_ptr, gidx_ptr, offs_m, mask_m, offs_n, mask_n, k0, K,
                stride_xm, stride_qn, stride_s, BITS: tl.constexpr, PACK: tl.constexpr, GROUP: tl.constexpr,
                SCALAR_GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_GIDX: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """The K tile as ``PACK`` products, one per bit field: field ``i`` of the words holds features
    ``word * PACK + i``, multiplied with those columns of x (a strided load of the small activation
    tile) - no reshape of the unpacked weights. Needs ``BLOCK_K / PACK >= 16``."""
    WORDS: tl.constexpr = BLOCK_K // PACK
    offs_w = k0 // PACK + tl.arange(0, WORDS)
    mask_w = offs_w < K // PACK
    words = tl.load(qw_ptr + offs_n[:, None].to(tl.int64) * stride_qn + offs_w[None, :],
                    mask=mask_n[:, None] & mask_w[None, :], other=0)
    if SCALAR_GROUP:
        g = k0 // GROUP
        s = tl.load(s_ptr + g * stride_s + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
        if HAS_ZERO:
            z = tl.load(z_ptr + g * stride_s + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
        else:
            z = (1 << (BITS - 1)) * 1.0
    for i in tl.static_range(PACK):
        feats = offs_w * PACK + i
        q = ((words >> (i * BITS)) & ((1 << BITS) - 1)).to(tl.float32)
        if not SCALAR_GROUP:
            if HAS_GIDX:
                g = tl.load(gidx_ptr + feats, mask=mask_w, other=0)
            else:
                g = feats // GROUP
            sp = g[None, :].to(tl.int64) * stride_s + offs_n[:, None]
            m2 = mask_n[:, None] & mask_w[None, :]
            s = tl.load(s_ptr + sp, mask=m2, other=0.0).to(tl.float32)
            if HAS_ZERO:
                z = tl.load(z_ptr + sp, mask=m2, other=0.0).to(tl.float32)
            else:
                z = (1 << (BITS - 1)) * 1.0
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + feats[None, :], mask=mask_m[:, None] & mask_w[None, :],
                    other=0.0)
        acc += tl.dot(((q - z) * s).to(x.dtype), tl.trans(x), input_precision=PRECISION)
    return acc


@triton.jit
def _wna16_gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, gidx_ptr, b_ptr, y_ptr, M, N, K, K_SPLIT,
                       stride_xm, stride_qn, stride_s, stride_ym, stride_ys,
                       BITS: tl.constexpr, PACK: tl.constexpr, GROUP: tl.constexpr, SCALAR_GROUP: tl.constexpr,
                       HAS_ZERO: tl.constexpr, HAS_GIDX: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       SPLIT_DOTS: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    mask_m = offs_m < M
    k_begin = pid_k * K_SPLIT
    k_end = tl.minimum(k_begin + K_SPLIT, K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        if SPLIT_DOTS:
            acc = _split_dots(acc, x_ptr, qw_ptr, s_ptr, z_ptr, gidx_ptr, offs_m, mask_m, offs_n, mask_n, k0, K,
                              stride_xm, stride_qn, stride_s, BITS, PACK, GROUP, SCALAR_GROUP, HAS_ZERO, HAS_GIDX,
                              BLOCK_N, BLOCK_K, PRECISION)
        else:
            mk = (k0 + offs_k) < K
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :],
                        mask=mask_m[:, None] & mk[None, :], other=0.0)
            w = _dequant_tile(qw_ptr, s_ptr, z_ptr, gidx_ptr, offs_n, mask_n, k0, K, stride_qn, stride_s,
                              BITS, PACK, GROUP, SCALAR_GROUP, HAS_ZERO, HAS_GIDX, BLOCK_N, BLOCK_K)
            acc += tl.dot(w.to(x.dtype), tl.trans(x), input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
    y = y_ptr + pid_k * stride_ys + offs_m[None, :] * stride_ym + offs_n[:, None]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask_m[None, :] & mask_n[:, None])


@triton.jit
def _wna16_gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, gidx_ptr, b_ptr, y_ptr, M, N, K,
                       stride_xm, stride_qn, stride_s, stride_ym,
                       BITS: tl.constexpr, PACK: tl.constexpr, GROUP: tl.constexpr, SCALAR_GROUP: tl.constexpr,
                       HAS_ZERO: tl.constexpr, HAS_GIDX: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_m
    pid_n = (pid % width) // group_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mk = (k0 + offs_k) < K
        x = tl.load(x_ptrs, mask=mask_m[:, None] & mk[None, :], other=0.0)
        w = _dequant_tile(qw_ptr, s_ptr, z_ptr, gidx_ptr, offs_n, mask_n, k0, K, stride_qn, stride_s,
                          BITS, PACK, GROUP, SCALAR_GROUP, HAS_ZERO, HAS_GIDX, BLOCK_N, BLOCK_K)
        acc += tl.dot(x, tl.trans(w.to(x.dtype)), input_precision=PRECISION)
        x_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _wna16_dequant_kernel(qw_ptr, s_ptr, z_ptr, gidx_ptr, w_ptr, N, K, stride_qn, stride_s,
                          BITS: tl.constexpr, PACK: tl.constexpr, GROUP: tl.constexpr, SCALAR_GROUP: tl.constexpr,
                          HAS_ZERO: tl.constexpr, HAS_GIDX: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    w = _dequant_tile(qw_ptr, s_ptr, z_ptr, gidx_ptr, offs_n, mask_n, k0, K, stride_qn, stride_s,
                      BITS, PACK, GROUP, SCALAR_GROUP, HAS_ZERO, HAS_GIDX, BLOCK_N, BLOCK_K)
    tl.store(w_ptr + offs_n[:, None].to(tl.int64) * K + offs_k[None, :], w.to(w_ptr.dtype.element_ty),
             mask=mask_n[:, None] & (offs_k < K)[None, :])


def _check(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int, block_k: int) -> tuple[int, int, int]:
    M, K = x.shape
    N = qweight.shape[0]
    pack = 32 // bits
    assert bits in (4, 8) and qweight.dtype == torch.int32 and qweight.shape[1] * pack == K
    assert x.stride(1) == 1 and qweight.is_contiguous() and scales.stride(1) == 1 and scales.shape[1] == N
    assert block_k % pack == 0 and block_k >= 16
    return M, N, K


def _common(qweight, scales, zeros, g_idx, bits, group_size, block_k) -> dict:
    return dict(BITS=bits, PACK=32 // bits, GROUP=group_size,
                SCALAR_GROUP=g_idx is None and group_size % block_k == 0,
                HAS_ZERO=zeros is not None, HAS_GIDX=g_idx is not None)


def gemv_config(M: int, N: int, K: int, group_size: int, device: torch.device, has_g_idx: bool = False
                ) -> tuple[int, int, int, int, int]:
    """(block_n, block_k, split_k, num_warps, num_stages) for the skinny kernel: 32-row tiles of
    128 features (one scale per row and tile for groups of 128, the common size), 8 warps for
    M > 16 or per-element scales (``g_idx``; 4 spill there, sm_90 AOT compile); split K until there are about two programs per
    SM (each split keeps at least four K tiles). A starting point for a search on the GPU."""
    block_n = 32
    block_k = 256 if group_size % 256 == 0 and K >= 256 else 128
    block_k = min(block_k, max(16, 1 << (K - 1).bit_length()))
    programs = cdiv(N, block_n)
    split = 1
    while programs * split * 2 <= 2 * num_sms(device) and K // (block_k * split * 2) >= 4:
        split *= 2
    return block_n, block_k, split, 4 if M <= 16 and not has_g_idx else 8, 3


def wna16_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               g_idx: torch.Tensor | None, bits: int, group_size: int, bias: torch.Tensor | None = None, *,
               block_n: int = 32, block_k: int = 256, split_k: int = 1, num_warps: int = 4,
               num_stages: int = 4, split_dots: bool = False) -> torch.Tensor:
    """x [M <= 64, K] → y [M, N] in x's dtype (see the module docstring for the operands).
    ``split_dots``: one product per bit field instead of reshaping the unpacked tile (``_split_dots``;
    needs ``block_k >= 16 * 32 / bits``)."""
    block_k = min(block_k, max(16, triton.next_power_of_2(x.shape[1])))
    M, N, K = _check(x, qweight, scales, bits, block_k)
    assert M <= MAX_M and (not split_dots or block_k * bits // 32 >= 16)
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return y
    k_split, split_k, out = splitk_partials(y, K, split_k, block_k)
    dummy = qweight
    _wna16_gemv_kernel[(triton.cdiv(N, block_n), split_k)](
        x, qweight, scales, zeros if zeros is not None else dummy, g_idx if g_idx is not None else dummy,
        bias if bias is not None and split_k == 1 else dummy, out, M, N, K, k_split,
        x.stride(0), qweight.stride(0), scales.stride(0), N, M * N,
        **_common(qweight, scales, zeros, g_idx, bits, group_size, block_k),
        HAS_BIAS=bias is not None and split_k == 1, BLOCK_M=max(16, triton.next_power_of_2(M)),
        BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_DOTS=split_dots, PRECISION=dot_precision(x.dtype),
        num_warps=num_warps, num_stages=num_stages)
    if split_k > 1:
        splitk_reduce(out, bias, y)
    return y


def wna16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               g_idx: torch.Tensor | None, bits: int, group_size: int, bias: torch.Tensor | None = None, *,
               block_m: int = 64, block_n: int = 128, block_k: int = 64, group_m: int = 8,
               num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """x [M, K] → y [M, N] in x's dtype, any M."""
    block_k = min(block_k, max(16, triton.next_power_of_2(x.shape[1])))
    M, N, K = _check(x, qweight, scales, bits, block_k)
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return y
    dummy = qweight
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, block_n),)
    _wna16_gemm_kernel[grid](
        x, qweight, scales, zeros if zeros is not None else dummy, g_idx if g_idx is not None else dummy,
        bias if bias is not None else dummy, y, M, N, K, x.stride(0), qweight.stride(0), scales.stride(0), N,
        **_common(qweight, scales, zeros, g_idx, bits, group_size, block_k),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
        PRECISION=dot_precision(x.dtype), num_warps=num_warps, num_stages=num_stages)
    return y


def wna16_dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                     g_idx: torch.Tensor | None, bits: int, group_size: int, dtype: torch.dtype,
                     block_n: int = 64, block_k: int = 128) -> torch.Tensor:
    """The weight ``[N, K]`` in ``dtype`` (columns in stored order), as ``wna16_ref.dequantize``."""
    N, K = qweight.shape[0], qweight.shape[1] * (32 // bits)
    block_k = min(block_k, max(16, triton.next_power_of_2(K)))
    w = torch.empty((N, K), dtype=dtype, device=qweight.device)
    dummy = qweight
    _wna16_dequant_kernel[(triton.cdiv(N, block_n), triton.cdiv(K, block_k))](
        qweight, scales, zeros if zeros is not None else dummy, g_idx if g_idx is not None else dummy, w, N, K,
        qweight.stride(0), scales.stride(0), **_common(qweight, scales, zeros, g_idx, bits, group_size, block_k),
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return w


#: from this many rows on, the weight is dequantized to a scratch tensor and multiplied by cuBLAS
#: (the fused kernel's dequantization is repeated for every row block and costs more than the
#: one-off write and read of the 16-bit weight); a starting point for bench/wna16_gpu.py --kernels
DENSE_MIN_M = 1024


def wna16_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 g_idx: torch.Tensor | None, bits: int, group_size: int,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """The dot-free GEMV (``kernels/wna16_gemv.py``) for M <= ``FMA_MAX_M``, the skinny kernel up to
    64 rows, the tiled one up to ``DENSE_MIN_M``, then dequantize + cuBLAS."""
    if x.shape[0] <= FMA_MAX_M:
        cfg = fma_gemv_config(x.shape[0], qweight.shape[0], x.shape[1], group_size, x.device, g_idx is not None, bits)
        return wna16_fma_gemv(x, qweight, scales, zeros, g_idx, bits, group_size, bias, **cfg)
    if x.shape[0] >= DENSE_MIN_M:
        w = wna16_dequantize(qweight, scales, zeros, g_idx, bits, group_size, x.dtype)
        return torch.nn.functional.linear(x, w, bias)
    if x.shape[0] <= MAX_M:
        bn, bk, split, nw, ns = gemv_config(x.shape[0], qweight.shape[0], x.shape[1], group_size, x.device,
                                            g_idx is not None)
        return wna16_gemv(x, qweight, scales, zeros, g_idx, bits, group_size, bias, block_n=bn, block_k=bk,
                          split_k=split, num_warps=nw, num_stages=ns)
    return wna16_gemm(x, qweight, scales, zeros, g_idx, bits, group_size, bias)


__all__ = ["DENSE_MIN_M", "MAX_M", "gemv_config", "wna16_dequantize", "wna16_gemm", "wna16_gemv", "wna16_linear"]
