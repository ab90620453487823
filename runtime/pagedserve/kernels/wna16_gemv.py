"""Dot-free decode GEMV for weight-only int4 / int8 (W4A16, W8A16) at M <= ``FMA_MAX_M`` rows.

``y[M, N] = x[M, K] @ W^T (+ bias)`` with the operands of ``kernels/wna16_ref.py`` (int32 words of
``PACK = 32 / bits`` consecutive input features per output row, scales / zeros ``[G, N]``, optional
``g_idx``), the signature of ``kernels.wna16.wna16_gemv``.

Why a second decode kernel. At batch 1-4 a quantized linear layer should run at the speed of its
weight read (a 4-bit weight is a quarter of the bf16 bytes). The skinny kernel of ``kernels/wna16.py``
does not get there: it dequantizes a whole ``[BLOCK_N, BLOCK_K]`` tile to bf16 for ``tl.dot`` with
the batch padded to 16, so per weight element it pays an int → float conversion (I2F) and an fp32 →
bf16 conversion, both quarter-rate instructions on sm_80 / sm_90, plus a register reshape of the
unpacked tile, while the tensor cores multiply mostly padding (one useful column in 16 at M = 1).
The layer ends up bound by instruction issue, not by memory.

This kernel keeps everything in fp32 on the FMA units:

- a program loads ``[BLOCK_N, WORDS]`` int32 words (``WORDS = BLOCK_K / PACK``, vectorized loads) and,
  for each bit field ``i`` (``tl.static_range(PACK)``) - the features ``word * PACK + i`` - multiplies
  its value with those activation columns (a strided load of the tiny x tile): no reshape, no
  interleave;
- the magic-number trick turns a field into a float without I2F: an fp32 whose exponent says
  ``2^e`` has mantissa bits worth ``2^(e - 23)`` each, so a field ``q`` sitting at bit ``p < 20``
  (``p + bits <= 23``) of the mantissa of ``2^(23 - p)`` reads as ``2^(23 - p) + q`` exactly:
  ``(w & (mask << p)) | ((127 + 23 - p) << 23)`` bitcast to fp32 is one LOP3, and one subtraction of
  ``2^(23 - p) + z`` gives ``q - z`` exactly (zeros are integers), folding in the zero point. The
  fields of the low half-word are read in place, those of the high half after one ``w >> 16``: one
  shift per word instead of one per field (``p = 0`` is the familiar ``q | 0x4B000000 = 2^23 + q``);
- the accumulator is ``[BLOCK_M, BLOCK_N, WORDS]`` fp32 (every row ``m`` against every weight element,
  ``BLOCK_M = next_pow2(M) <= 4``), reduced over words with one ``tl.sum`` at the end only. Every
  operand is built 3-d from the start (words ``[1, BLOCK_N, WORDS]``, x ``[BLOCK_M, 1, WORDS]``): with
  2-d words broadcast into the 3-d product, Triton gave the two different layouts and converted each
  unpacked field through shared memory (36 barriers per K tile); 3-d, the sm_90 loop body at M = 1,
  128 x 128 tile is 128 LOP3 + 128 FADD + 128 FFMA per 16 words a thread, plus one conversion of the
  per-tile partial for the scale (a byte-permute ``prmt`` variant measured no fewer instructions);
- scales: when all features of a word share a group (``group_size % PACK == 0``, no ``g_idx``) the
  tile's partial ``sum_i (q_i - z) * x_i`` is multiplied by the scale once per word (one multiply per
  ``PACK`` products); if the K tile lies in one group (``SCALE_MODE`` 0) scale and zero are one
  ``[BLOCK_N]`` load per tile, otherwise a per-word gather the L1 serves; act-order ``g_idx`` gathers
  them per element. Symmetric layers subtract the midpoint ``2^(bits-1)`` as a constant; the zeros of
  a one-group tile leave the inner loop, ``sum (q - z) x s = s (sum q x - z X)`` with ``X`` the tile's
  sum of x, a ``[BLOCK_M, BLOCK_N]`` correction per tile (inside the loop, Triton converted every
  unpacked field between layouts: 32 barriers per tile);
- split-K: ``split_k`` programs per column block write fp32 partials ``[split, M, N]``, summed with the
  bias and cast to the output dtype by one small kernel (``_splitk_reduce_kernel``); with
  ``split_k == 1`` the GEMV stores the output directly.

Reference: ``kernels.wna16_ref.wna16_linear_ref``. Tiles: ``fma_gemv_config`` (a starting point for
the search of ``bench/wna16_gpu.py --kernels``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.kernels.utils import cdiv, next_pow2, num_sms

FMA_MAX_M = 4  # the largest M this kernel takes (the accumulator grows with M)


@triton.jit
def _scale_zero(s_ptr, z_ptr, idx, mask, BITS: tl.constexpr, HAS_ZERO: tl.constexpr):
    """Scales and zeros (fp32; the midpoint if symmetric) at the element offsets ``idx`` of ``[G, N]``."""
    s = tl.load(s_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    if HAS_ZERO:
        z = tl.load(z_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    else:
        z = (1 << (BITS - 1)) * 1.0
    return s, z


@triton.jit
def _fma_gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, gidx_ptr, b_ptr, y_ptr, M, N, K, K_SPLIT,
                     stride_xm, stride_qn, stride_s, stride_ym, stride_ys,
                     BITS: tl.constexpr, PACK: tl.constexpr, GROUP: tl.constexpr, SCALE_MODE: tl.constexpr,
                     HAS_ZERO: tl.constexpr, HAS_GIDX: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREFETCH: tl.constexpr):
    """SCALE_MODE 0: one group per K tile; 1: one group per word; 2: per element (``g_idx``).
    PREFETCH: load tile t + 1's words before tile t's math (more bytes in flight, more registers)."""
    WORDS: tl.constexpr = BLOCK_K // PACK
    MASK: tl.constexpr = (1 << BITS) - 1
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    # every tensor is 3-d (m, n, word), so that all share one layout: each thread holds its (n, word)
    # elements for all rows m, and no layout conversion (shared memory, barriers) sits in the loop
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n3 = offs_n[None, :, None]
    mask_n3 = n3 < N
    m3 = tl.arange(0, BLOCK_M)[:, None, None]
    mask_m3 = m3 < M
    words_k = K // PACK
    k_begin = pid_k * K_SPLIT
    k_end = tl.minimum(k_begin + K_SPLIT, K)
    qw_rows = qw_ptr + n3.to(tl.int64) * stride_qn
    x_rows = x_ptr + m3 * stride_xm
    acc = tl.zeros((BLOCK_M, BLOCK_N, WORDS), dtype=tl.float32)
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    mask_n = offs_n < N
    corr = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # sum over tiles of s z X (zeros of one-group tiles)
    if PREFETCH:  # the next tile's words are loaded before this tile's math (register double buffer)
        w3 = k_begin // PACK + tl.arange(0, WORDS)[None, None, :]
        nxt = tl.load(qw_rows + w3, mask=mask_n3 & (w3 < k_end // PACK), other=0)
    for k0 in range(k_begin, k_end, BLOCK_K):
        w3 = k0 // PACK + tl.arange(0, WORDS)[None, None, :]
        mask_w3 = w3 < words_k
        mask_nw = mask_n3 & mask_w3
        if PREFETCH:
            words = nxt
            nxt = tl.load(qw_rows + w3 + WORDS, mask=mask_n3 & (w3 + WORDS < k_end // PACK), other=0)
        else:
            words = tl.load(qw_rows + w3, mask=mask_nw, other=0)  # [1, BLOCK_N, WORDS]
        if SCALE_MODE == 0:
            s, z = _scale_zero(s_ptr, z_ptr, (k0 // GROUP) * stride_s + n3, mask_n3, BITS, HAS_ZERO)
        elif SCALE_MODE == 1:
            s, z = _scale_zero(s_ptr, z_ptr, ((w3 * PACK) // GROUP).to(tl.int64) * stride_s + n3, mask_nw,
                               BITS, HAS_ZERO)
        # zeros of a one-group tile leave the inner loop: sum_k (q_k - z) x_k s = s (sum_k q_k x_k - z X) with
        # X = sum_k x_k over the tile, a [BLOCK_M, BLOCK_N] correction per tile (zeros inside the loop made
        # Triton convert every unpacked field between layouts)
        ZERO_LATE: tl.constexpr = HAS_ZERO and SCALE_MODE == 0
        part = acc  # (a placeholder: the first field assigns it; a zero start would cost an add and moves)
        for i in tl.static_range(PACK):
            feats = w3 * PACK + i
            p = (i % (PACK // 2)) * BITS  # the field's bit in its half-word (a constexpr)
            half = words >> ((i // (PACK // 2)) * 16)  # the high half-word's shift is shared (CSE)
            magic = ((half & (MASK << p)) | ((150 - p) << 23)).to(tl.float32, bitcast=True)  # 2^(23-p) + q
            x = tl.load(x_rows + feats, mask=mask_m3 & mask_w3, other=0.0).to(tl.float32)  # [BLOCK_M, 1, WORDS]
            if SCALE_MODE == 2:
                if HAS_GIDX:
                    g = tl.load(gidx_ptr + feats, mask=mask_w3, other=0)
                else:  # groups that split a word
                    g = feats // GROUP
                se, ze = _scale_zero(s_ptr, z_ptr, g.to(tl.int64) * stride_s + n3, mask_nw, BITS, HAS_ZERO)
                acc += ((magic - (ze + (1 << (23 - p)) * 1.0)) * se) * x
            else:
                if ZERO_LATE:
                    q = magic - (1 << (23 - p)) * 1.0
                else:
                    q = magic - (z + (1 << (23 - p)) * 1.0)
                part = q * x if i == 0 else part + q * x
        if SCALE_MODE != 2:
            acc += part * s
        if ZERO_LATE:
            offs_k = k0 + tl.arange(0, BLOCK_K)
            xt = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                         mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0).to(tl.float32)
            so = (k0 // GROUP) * stride_s + offs_n
            sz = (tl.load(s_ptr + so, mask=mask_n, other=0.0).to(tl.float32) *
                  tl.load(z_ptr + so, mask=mask_n, other=0.0).to(tl.float32))
            corr += tl.sum(xt, axis=1)[:, None] * sz[None, :]
    y = tl.sum(acc, axis=2)  # [BLOCK_M, BLOCK_N]
    if HAS_ZERO and SCALE_MODE == 0:
        y -= corr
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + pid_k * stride_ys + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(out, y.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _splitk_reduce_kernel(p_ptr, b_ptr, y_ptr, MN, N, SPLIT, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """``y[m, n] = sum_s p[s, m, n] (+ bias[n])`` in y's dtype (y contiguous ``[M, N]``)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, SPLIT):
        acc += tl.load(p_ptr + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


def splitk_partials(y: torch.Tensor, K: int, split_k: int, block_k: int) -> tuple[int, int, torch.Tensor]:
    """``(k_split, split_k, out)``: whole K tiles per split (so fewer splits may result) and where the
    kernel writes: ``y`` itself without a split, else fp32 partials ``[split_k, M, N]``."""
    k_split = cdiv(cdiv(K, split_k), block_k) * block_k
    split_k = cdiv(K, k_split)
    out = y if split_k == 1 else torch.empty((split_k, *y.shape), dtype=torch.float32, device=y.device)
    return k_split, split_k, out


def splitk_reduce(partials: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor) -> None:
    """``y = partials.sum(0) (+ bias)`` in y's dtype, one launch (y contiguous ``[M, N]``)."""
    split_k, M, N = partials.shape
    block = min(1024, max(128, next_pow2(M * N)))
    _splitk_reduce_kernel[(triton.cdiv(M * N, block),)](
        partials, bias if bias is not None else partials, y, M * N, N, split_k, HAS_BIAS=bias is not None,
        BLOCK=block, num_warps=4)


def scale_mode(group_size: int, block_k: int, bits: int, has_g_idx: bool) -> int:
    """0: a K tile lies in one group; 1: a word does; 2: per-element scales (act-order ``g_idx``)."""
    if has_g_idx:
        return 2
    if group_size % block_k == 0:
        return 0
    return 1 if group_size % (32 // bits) == 0 else 2


def fma_gemv_config(M: int, N: int, K: int, group_size: int, device: torch.device | str | None,
                    has_g_idx: bool = False, bits: int = 4) -> dict:
    """The keyword arguments of ``wna16_fma_gemv`` (block_n, block_k, split_k, num_warps, num_stages,
    prefetch), from the GPU search of run 37 (``bench/wna16_gpu.py --fma``, H200, 4-bit g128, the
    Llama-3.1-8B and 70B shapes, M = 1 / 2 / 4): 64 rows x 128 features per tile everywhere (smaller
    tiles with ``g_idx``, whose scale and zero tiles are gathered per field), 2 warps at M = 1 and 4
    above; split K until a program's K range is at most 2048, then further while there are fewer
    than 8 programs per SM and each split keeps at least 512 features, at most 8 splits."""
    pack = 32 // bits
    block_k = 128 if (has_g_idx or group_size % 128 == 0) else 256
    block_k = min(block_k, max(pack * 2, next_pow2(K)))
    words = block_k // pack
    block_m = next_pow2(max(M, 1))
    block_n = 64 if not has_g_idx else max(16, min(64, 1024 // (block_m * words)))
    block_n = min(block_n, max(16, next_pow2(N)))
    programs = cdiv(N, block_n)
    split = 1
    while split < 8 and K // split > 2048:
        split *= 2
    while split < 8 and programs * split < 8 * num_sms(device) and K // (split * 2) >= 512:
        split *= 2
    return dict(block_n=block_n, block_k=block_k, split_k=split, num_warps=2 if M == 1 else 4, num_stages=3,
                prefetch=False)


def wna16_fma_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                   g_idx: torch.Tensor | None, bits: int, group_size: int, bias: torch.Tensor | None = None, *,
                   block_n: int = 64, block_k: int = 256, split_k: int = 1, num_warps: int = 4,
                   num_stages: int = 3, prefetch: bool = False) -> torch.Tensor:
    """x [M <= FMA_MAX_M, K] → y [M, N] in x's dtype (see the module docstring for the operands).
    ``prefetch``: load the next K tile's words before this tile's math."""
    M, K = x.shape
    N = qweight.shape[0]
    pack = 32 // bits
    assert bits in (4, 8) and qweight.dtype == torch.int32 and qweight.shape[1] * pack == K, "bad qweight"
    assert x.stride(1) == 1 and qweight.is_contiguous() and scales.stride(1) == 1 and scales.shape[1] == N
    assert M <= FMA_MAX_M, f"wna16_fma_gemv takes at most {FMA_MAX_M} rows, got {M}"
    block_k = min(block_k, max(2 * pack, next_pow2(K)))
    assert block_k % pack == 0 and (block_k // pack) & (block_k // pack - 1) == 0, "block_k / pack: a power of 2"
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return y
    k_split, split_k, out = splitk_partials(y, K, split_k, block_k)
    dummy = qweight
    direct_bias = bias is not None and split_k == 1
    _fma_gemv_kernel[(triton.cdiv(N, block_n), split_k)](
        x, qweight, scales, zeros if zeros is not None else dummy, g_idx if g_idx is not None else dummy,
        bias if direct_bias else dummy, out, M, N, K, k_split, x.stride(0), qweight.stride(0), scales.stride(0),
        N, M * N, BITS=bits, PACK=pack, GROUP=group_size,
        SCALE_MODE=scale_mode(group_size, block_k, bits, g_idx is not None), HAS_ZERO=zeros is not None,
        HAS_GIDX=g_idx is not None, HAS_BIAS=direct_bias, BLOCK_M=next_pow2(M), BLOCK_N=block_n, BLOCK_K=block_k,
        PREFETCH=prefetch,
        num_warps=num_warps, num_stages=num_stages)
    if split_k > 1:
        splitk_reduce(out, bias, y)
    return y


__all__ = ["FMA_MAX_M", "fma_gemv_config", "scale_mode", "wna16_fma_gemv"]
