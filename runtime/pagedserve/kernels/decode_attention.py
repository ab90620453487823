"""Paged decode attention (one query token per request), GQA-aware, with split-KV.

Grid ``(batch, num_kv_heads, num_splits)``. One program owns one KV head of one request and one
contiguous slice of its context: it loads that head's K/V rows once for the whole group of
``H / KVH`` query heads (the group is the M side of a ``tl.dot``, padded to 16 rows), keeps an
online softmax in fp32 and writes either the final output (``num_splits == 1``) or a partial
``(output / l, lse)`` per split, which ``_decode_reduce_kernel`` (grid ``(batch, heads)``) merges.

CUDA-graph rules: the grid depends only on the batch size, the head counts and ``num_splits``
(a Python int); every program derives its slice from ``seq_lens`` on the device:
``per_split = roundup(cdiv(seq_len, num_splits), TILE_N)``, split ``s`` covers
``[s * per_split, min((s + 1) * per_split, seq_len))``, and may be empty (it then writes
``lse = -inf``, which the merge ignores). A request with ``seq_len == 0`` (a padding row of a
captured batch) gets zeros. No host syncs anywhere.

Sliding window ``W`` (``window > 0``): the new token at position ``seq_len - 1`` sees only
``[max(0, seq_len - W), seq_len)``; the splits divide that span, so nothing outside it is read.
Logit soft-capping ``c > 0`` (Gemma 2): scores ``s`` become ``c * tanh(s / c)`` before the softmax.
"""
from __future__ import annotations

import torch
import triton.language as tl

from pagedserve.kernels.jit import jit_unspecialized
from pagedserve.kernels.utils import cdiv, dot_precision, fp16_dot, next_pow2, num_sms

LOG2E = 1.4426950408889634


@jit_unspecialized("block_tables_ptr", "seq_lens_ptr", "stride_bt", "stride_lb", "stride_lh", "window")
def _decode_attn_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
    out_ptr, part_out_ptr, part_lse_ptr,
    scale_log2, window, softcap_log2,
    stride_qb, stride_qh,
    stride_cb, stride_cs, stride_ch,
    stride_bt,
    stride_ob, stride_oh,
    stride_pb, stride_ph, stride_ps,
    stride_lb, stride_lh,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr,
    ONE_SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr, FP16_DOT: tl.constexpr,
    USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)

    seq_len = tl.load(seq_lens_ptr + b)
    lo = 0
    if USE_WINDOW:
        lo = tl.maximum(seq_len - window, 0)
    per_split = tl.cdiv(tl.cdiv(seq_len - lo, num_splits), TILE_N) * TILE_N
    start = lo + split * per_split
    end = tl.minimum(start + per_split, seq_len)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    g_mask = g < GROUP
    d_mask = d < HEAD_DIM
    heads = kvh * GROUP + g
    b64 = b.to(tl.int64)
    q = tl.load(q_ptr + b64 * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    if FP16_DOT:  # an fp8 cache: the dots run in fp16 (fp8 -> fp16 is one conversion, -> bf16 is not)
        q = q.to(tl.float16)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    bt_row = block_tables_ptr + b64 * stride_bt
    head_off = kvh.to(tl.int64) * stride_ch
    n = tl.arange(0, TILE_N)
    for s in range(start, end, TILE_N):
        pos = s + n
        valid = pos < end
        blk = tl.load(bt_row + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        row = blk * stride_cb + (pos % BLOCK_SIZE).to(tl.int64) * stride_cs + head_off
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + row[:, None] + d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * scale_log2
        if USE_SOFTCAP:  # c * tanh(s / c), on the log2 scale: qk = s log2(e), softcap_log2 = c log2(e)
            qk = softcap_log2 * (2.0 * tl.sigmoid(2.0 * qk / softcap_log2) - 1.0)
        qk = tl.where(valid[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + row[:, None] + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION)
        m_i = m_new

    nonempty = l_i > 0.0
    o = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    if ONE_SPLIT:
        tl.store(out_ptr + b64 * stride_ob + heads[:, None] * stride_oh + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
    else:
        lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), float("-inf"))
        tl.store(part_out_ptr + b64 * stride_pb + heads[:, None] * stride_ph + split * stride_ps + d[None, :],
                 o, mask=g_mask[:, None] & d_mask[None, :])
        tl.store(part_lse_ptr + b64 * stride_lb + heads * stride_lh + split, lse, mask=g_mask)


@jit_unspecialized("num_splits", "stride_lb", "stride_lh")
def _decode_reduce_kernel(
    part_out_ptr, part_lse_ptr, out_ptr,
    num_splits,
    stride_pb, stride_ph, stride_ps,
    stride_lb, stride_lh,
    stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
):
    """Merge the splits of one (request, head): ``sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M)``,
    ``CHUNK`` splits at a time with a running max ``M``; empty splits (lse = -inf) weigh 0."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    lse_base = part_lse_ptr + b * stride_lb + h * stride_lh
    out_base = part_out_ptr + b * stride_pb + h * stride_ph
    c = tl.arange(0, CHUNK)

    m = tl.max(tl.full([CHUNK], float("-inf"), tl.float32), 0)
    acc = tl.zeros([BLOCK_D], tl.float32)
    wsum = tl.sum(tl.zeros([CHUNK], tl.float32), 0)
    for s0 in range(0, num_splits, CHUNK):
        sc = s0 + c
        lse = tl.load(lse_base + sc, mask=sc < num_splits, other=float("-inf"))
        live = lse > float("-inf")
        m_new = tl.maximum(m, tl.max(lse, 0))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        rescale = tl.exp2(m - m_ref)  # 0 while nothing was live
        w = tl.where(live, tl.exp2(lse - m_ref), 0.0)
        o = tl.load(out_base + sc[:, None] * stride_ps + d[None, :], mask=live[:, None] & d_mask[None, :],
                    other=0.0)
        acc = acc * rescale + tl.sum(w[:, None] * o, 0)
        wsum = wsum * rescale + tl.sum(w, 0)
        m = m_new
    out = acc / tl.where(wsum > 0.0, wsum, 1.0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d_mask)


# ----------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------

#: default launch parameters (tuned on the H200 with bench/kernels/attn_tune.py; see docs/kernels.md)
DECODE_TILE_N = 64
DECODE_NUM_WARPS = 2
DECODE_NUM_STAGES = 3
#: with many programs per SM (large batches) smaller tiles keep more loads in flight
DECODE_MANY_PROGRAMS = 2048
DECODE_MANY_TILE_N, DECODE_MANY_NUM_WARPS, DECODE_MANY_NUM_STAGES = 32, 2, 2
DECODE_TILE_N_FP32 = 16  # fp32 inputs (tests only): the FMA dot needs small tiles
DECODE_NUM_WARPS_FP32, DECODE_NUM_STAGES_FP32 = 4, 2
REDUCE_CHUNK = 8  # splits merged per iteration of the reduction kernel
REDUCE_NUM_WARPS = 2
#: split-KV rule knobs
SPLIT_TARGET_PROGRAMS_PER_SM = 2  # aim for this many (request, kv head, split) programs per SM
SPLIT_MIN_TOKENS = 256  # never give a split fewer tokens than this (at the static bound)
SPLIT_MAX = 64


def decode_num_splits(batch: int, num_kv_heads: int, max_seq_len: int, device: torch.device | str | None,
                      *, programs_per_sm: int | None = None, min_tokens: int | None = None,
                      max_splits: int | None = None, sm_count: int | None = None) -> int:
    """How many KV splits a decode launch uses; a pure function of *static* sizes.

    ``max_seq_len`` is a bound on the context length (the batch's ``max_seq_len`` in eager mode;
    ``max_model_len`` / a graph's bound under CUDA graphs). Enough splits to put about
    ``programs_per_sm`` programs on every SM, but no split shorter than ``min_tokens`` tokens at
    that bound: long contexts with a small batch get many splits, big batches get one (then the
    merge kernel is skipped entirely).
    """
    pps = SPLIT_TARGET_PROGRAMS_PER_SM if programs_per_sm is None else programs_per_sm
    mt = SPLIT_MIN_TOKENS if min_tokens is None else min_tokens
    mx = SPLIT_MAX if max_splits is None else max_splits
    programs = max(1, batch * num_kv_heads)
    want = cdiv(pps * (sm_count or num_sms(device)), programs)
    if want <= 2:  # two splits do not pay for the merge launch (H200: batch 32, 16.5 vs 17.3 us)
        want = 1
    by_len = max(1, max_seq_len // mt)
    return int(max(1, min(want, by_len, mx)))


def decode_launch_config(num_programs: int, dtype: torch.dtype, head_dim: int = 128) -> tuple[int, int, int]:
    """Default (tile_n, num_warps, num_stages) for a decode launch of ``num_programs`` programs.

    H200 sweep (bench/kernels/attn_tune.py, bf16, contexts 300-350): tile 64 / 2 warps / 3 stages is
    the best or within 1% at batch 8-64; from ~16 programs per SM (batch 256+) tile 32 / 2 warps /
    2 stages reads K/V 10% faster. Head dims above 128 (Gemma's 256) take 4 warps: with 2 the
    [16, 256] fp32 accumulator and the K/V tiles spill (sm_90 AOT compile, 255 registers + stack);
    not yet tuned on a GPU."""
    if dtype == torch.float32:
        return DECODE_TILE_N_FP32, DECODE_NUM_WARPS_FP32, DECODE_NUM_STAGES_FP32
    warps = 4 if head_dim > 128 else None
    if num_programs >= DECODE_MANY_PROGRAMS:
        return DECODE_MANY_TILE_N, warps or DECODE_MANY_NUM_WARPS, DECODE_MANY_NUM_STAGES
    return DECODE_TILE_N, warps or DECODE_NUM_WARPS, DECODE_NUM_STAGES


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float, *,
                           out: torch.Tensor | None = None, num_splits: int | None = None,
                           max_seq_len: int | None = None, tile_n: int | None = None,
                           num_warps: int | None = None, num_stages: int | None = None,
                           sliding_window: int | None = None, logit_softcap: float | None = None) -> torch.Tensor:
    """Attention of one new token per request over its paged context.

    q: [B, H, D] (any strides with a unit last stride); k_cache/v_cache: [num_blocks, block_size,
    KVH, D]; block_tables: [>=B, max_blocks] int32; seq_lens: [>=B] int32 (context length *including*
    the new token, already stored). Returns out [B, H, D] (written into ``out`` if given).
    ``num_splits``: fixed split count (CUDA graphs); otherwise :func:`decode_num_splits` of
    ``max_seq_len`` (or, if that is None too, of the block table's capacity - a static bound).
    ``sliding_window``: attend to the last ``W`` positions only (None / <= 0: all);
    ``logit_softcap``: Gemma 2's ``c * tanh(s / c)`` on the scaled scores (None / 0: off).
    """
    B, H, D = q.shape
    _, block_size, KVH, Dk = k_cache.shape
    assert Dk == D and v_cache.shape == k_cache.shape, "k/v cache shape mismatch"
    assert H % KVH == 0, f"num_heads {H} not a multiple of num_kv_heads {KVH}"
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    assert q.stride(-1) == 1
    if out is None:
        out = torch.empty((B, H, D), dtype=q.dtype, device=q.device)
    assert out.shape == (B, H, D) and out.stride(-1) == 1
    if B == 0:
        return out
    window = int(sliding_window) if sliding_window is not None and sliding_window > 0 else 0
    softcap = float(logit_softcap) if logit_softcap else 0.0
    if num_splits is None:
        bound = max_seq_len if max_seq_len is not None else block_tables.shape[1] * block_size
        if window:
            bound = min(bound, window)
        num_splits = decode_num_splits(B, KVH, bound, q.device)
    num_splits = max(1, int(num_splits))
    group = H // KVH
    block_g = max(16, next_pow2(group))
    block_d = max(16, next_pow2(D))
    d_tile, d_warps, d_stages = decode_launch_config(B * KVH * num_splits, q.dtype, D)
    tile_n, num_warps, num_stages = tile_n or d_tile, num_warps or d_warps, num_stages or d_stages
    scale_log2 = float(scale) * LOG2E
    one = num_splits == 1
    if one:
        part_out = part_lse = out  # unused
        p_strides = (0, 0, 0)
        l_strides = (0, 0)
    else:
        part_out = torch.empty((B, H, num_splits, D), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((B, H, num_splits), dtype=torch.float32, device=q.device)
        p_strides = part_out.stride()[:3]
        l_strides = part_lse.stride()[:2]
    _decode_attn_kernel[(B, KVH, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, part_out, part_lse,
        scale_log2, window, softcap * LOG2E,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        *p_strides, *l_strides,
        GROUP=group, BLOCK_G=block_g, HEAD_DIM=D, BLOCK_D=block_d,
        BLOCK_SIZE=block_size, TILE_N=tile_n, ONE_SPLIT=one, DOT_PRECISION=dot_precision(q.dtype),
        FP16_DOT=fp16_dot(q, k_cache), USE_WINDOW=window > 0, USE_SOFTCAP=softcap > 0.0,
        num_warps=num_warps, num_stages=num_stages)
    if not one:
        _decode_reduce_kernel[(B, H)](
            part_out, part_lse, out, num_splits,
            *p_strides, *l_strides, out.stride(0), out.stride(1),
            HEAD_DIM=D, BLOCK_D=block_d, CHUNK=REDUCE_CHUNK, num_warps=REDUCE_NUM_WARPS)
    return out


def decode_flops_bytes(seq_lens: list[int], num_heads: int, num_kv_heads: int, head_dim: int,
                       elem_bytes: int) -> tuple[float, float]:
    """(FLOPs, bytes of K+V read) of one decode call — for the benchmark's roofline numbers."""
    ctx = float(sum(seq_lens))
    return 4.0 * ctx * num_heads * head_dim, 2.0 * ctx * num_kv_heads * head_dim * elem_bytes


__all__ = ["paged_decode_attention", "decode_num_splits", "decode_launch_config", "decode_flops_bytes"]
