"""Prefill / extend attention over the paged KV cache (variable-length packed queries).

Every request ``b`` has ``Q_b = query_start_loc[b+1] - query_start_loc[b]`` new tokens, already
stored in the cache, and ``L_b = seq_lens[b]`` cached tokens in all; its query ``j`` sits at
position ``L_b - Q_b + j`` and sees positions ``0 .. L_b - Q_b + j`` (the cached prefix from earlier
chunks or a prefix-cache hit, plus its own causal part). All K/V is read from the paged cache.

Grid ``(num_heads, cdiv(max_query_len, BLOCK_M), batch)`` — heads fastest, so the query heads of
one GQA group run side by side and share the K/V tiles through L2. A program takes ``BLOCK_M``
queries of one head (tiles past the request's query length exit at once; query tiles are visited
last-first so the longest programs start first) and sweeps the KV positions with online softmax
in fp32, in two loops: tiles below the first query's position need no causal mask; the
diagonal tiles after it are masked; tiles past the last query's position are never read.

Sliding window ``W`` (``window > 0``): query ``p`` sees ``p - W + 1 .. p`` only. The sweep then
starts at the tile holding the first row's lowest visible position; tiles up to the last row's
window start are masked (the windows' left edge), the tiles inside every row's window run
unmasked as above, the diagonal is masked; no position left of every row's window is read
(their blocks may have been freed). Logit soft-capping ``c > 0``
(Gemma 2): scores ``s`` become ``c * tanh(s / c)`` before the mask and the softmax.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.kernels.jit import jit_unspecialized
from pagedserve.kernels.utils import cdiv, dot_precision, fp16_dot, next_pow2

LOG2E = 1.4426950408889634


@triton.jit
def _masked_tile(start_n, m_i, l_i, acc, q, q_pos, n, d, d_mask, bt_row, head_off, k_cache_ptr, v_cache_ptr,
                 kv_end, win_lo, window, scale_log2, softcap_log2, stride_cb, stride_cs,
                 BLOCK_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_WINDOW: tl.constexpr,
                 USE_SOFTCAP: tl.constexpr):
    """One KV tile with the causal mask (and the window): the online-softmax update."""
    pos = start_n + n
    valid = (pos < kv_end) & (pos >= win_lo)  # blocks left of the window may be freed: never read
    blk = tl.load(bt_row + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
    off = blk * stride_cb + (pos % BLOCK_SIZE).to(tl.int64) * stride_cs + head_off
    kv_mask = valid[:, None] & d_mask[None, :]
    k = tl.load(k_cache_ptr + off[:, None] + d[None, :], mask=kv_mask, other=0.0)
    qk = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * scale_log2
    if USE_SOFTCAP:
        qk = softcap_log2 * (2.0 * tl.sigmoid(2.0 * qk / softcap_log2) - 1.0)
    visible = valid[None, :] & (pos[None, :] <= q_pos[:, None])
    if USE_WINDOW:
        visible = visible & (pos[None, :] > q_pos[:, None] - window)
    qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_ref = m_new
    if USE_WINDOW:  # a row may have seen nothing yet: keep exp2 away from -inf - -inf
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(qk - m_ref[:, None])
    alpha = tl.exp2(m_i - m_ref)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_cache_ptr + off[:, None] + d[None, :], mask=kv_mask, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@jit_unspecialized("block_tables_ptr", "seq_lens_ptr", "query_start_loc_ptr", "stride_bt", "window")
def _prefill_attn_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr, out_ptr,
    scale_log2, window, softcap_log2,
    stride_qt, stride_qh,
    stride_cb, stride_cs, stride_ch,
    stride_bt,
    stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, FP16_DOT: tl.constexpr,
    USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr,
):
    h = tl.program_id(0)
    mt = tl.num_programs(1) - 1 - tl.program_id(1)
    b = tl.program_id(2)

    q_start = tl.load(query_start_loc_ptr + b)
    q_len = tl.load(query_start_loc_ptr + b + 1) - q_start
    if mt * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + b)
    ctx = seq_len - q_len  # position of query 0
    kvh = h // GROUP

    rows = mt * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < q_len
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    tok = (q_start + rows).to(tl.int64)
    q = tl.load(q_ptr + tok[:, None] * stride_qt + h * stride_qh + d[None, :],
                mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    if FP16_DOT:  # an fp8 cache: the dots run in fp16 (fp8 -> fp16 is one conversion, -> bf16 is not)
        q = q.to(tl.float16)
    q_pos = ctx + rows

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bt_row = block_tables_ptr + b.to(tl.int64) * stride_bt
    head_off = kvh.to(tl.int64) * stride_ch
    n = tl.arange(0, BLOCK_N)

    first_pos = ctx + mt * BLOCK_M  # the tile's first query position (every row sees <= it)
    full_end = ((first_pos + 1) // BLOCK_N) * BLOCK_N  # KV tiles fully visible to all rows
    kv_end = tl.minimum(seq_len, first_pos + BLOCK_M)  # nothing at or past this is visible
    masked_start = 0  # [masked_start, a_end): the left edge of the rows' windows (masked)
    a_end = 0
    win_lo = 0  # no row of the tile sees a position below this one
    if USE_WINDOW:
        win_lo = tl.maximum(first_pos - window + 1, 0)
        masked_start = (win_lo // BLOCK_N) * BLOCK_N
        last_lo = tl.maximum(first_pos + BLOCK_M - window, 0)  # the tile's last row's window start
        a_end = tl.maximum(tl.minimum(tl.cdiv(last_lo, BLOCK_N) * BLOCK_N, full_end), masked_start)

    # 0) the windows' left edge (sliding window only): masked
    for start_n in range(masked_start, a_end, BLOCK_N):
        m_i, l_i, acc = _masked_tile(start_n, m_i, l_i, acc, q, q_pos, n, d, d_mask, bt_row, head_off,
                                     k_cache_ptr, v_cache_ptr, kv_end, win_lo, window, scale_log2, softcap_log2,
                                     stride_cb, stride_cs, BLOCK_SIZE, DOT_PRECISION, USE_WINDOW, USE_SOFTCAP)

    # 1) unmasked tiles: a_end <= positions < full_end <= first_pos + 1 <= seq_len (inside every window)
    for start_n in range(a_end, full_end, BLOCK_N):
        pos = start_n + n
        blk = tl.load(bt_row + pos // BLOCK_SIZE).to(tl.int64)
        off = blk * stride_cb + (pos % BLOCK_SIZE).to(tl.int64) * stride_cs + head_off
        k = tl.load(k_cache_ptr + off[:, None] + d[None, :], mask=d_mask[None, :], other=0.0)
        qk = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * scale_log2
        if USE_SOFTCAP:
            qk = softcap_log2 * (2.0 * tl.sigmoid(2.0 * qk / softcap_log2) - 1.0)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + off[:, None] + d[None, :], mask=d_mask[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION)
        m_i = m_new

    # 2) diagonal tiles: causal mask (and the end of the sequence; and the window)
    for start_n in range(full_end, kv_end, BLOCK_N):
        m_i, l_i, acc = _masked_tile(start_n, m_i, l_i, acc, q, q_pos, n, d, d_mask, bt_row, head_off,
                                     k_cache_ptr, v_cache_ptr, kv_end, win_lo, window, scale_log2, softcap_log2,
                                     stride_cb, stride_cs, BLOCK_SIZE, DOT_PRECISION, USE_WINDOW, USE_SOFTCAP)

    o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(out_ptr + tok[:, None] * stride_ot + h * stride_oh + d[None, :], o.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & d_mask[None, :])


#: default tile shapes / launch parameters per head_dim bucket (tunable; see docs/kernels.md)
PREFILL_CONFIGS = {
    64: dict(block_m=128, block_n=64, num_warps=8, num_stages=3),
    128: dict(block_m=128, block_n=64, num_warps=8, num_stages=3),
    256: dict(block_m=64, block_n=32, num_warps=8, num_stages=2),
}


#: fp32 inputs (tests only; no tensor cores): small tiles keep the FMA dot out of local memory
PREFILL_CONFIG_FP32 = dict(block_m=16, block_n=16, num_warps=4, num_stages=2)


def prefill_config(head_dim: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    if dtype == torch.float32:
        return dict(PREFILL_CONFIG_FP32)
    for bound in sorted(PREFILL_CONFIGS):
        if head_dim <= bound:
            return dict(PREFILL_CONFIGS[bound])
    return dict(PREFILL_CONFIGS[max(PREFILL_CONFIGS)])


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                            scale: float, max_query_len: int, *, out: torch.Tensor | None = None,
                            block_m: int | None = None, block_n: int | None = None,
                            num_warps: int | None = None, num_stages: int | None = None,
                            sliding_window: int | None = None, logit_softcap: float | None = None) -> torch.Tensor:
    """Causal attention of packed variable-length queries over the paged cache.

    q: [T, H, D] (unit last stride); ``query_start_loc [B+1]`` holds *absolute* row indices into
    ``q``/``out`` (so a slice ``query_start_loc[n:]`` of a larger batch works as is); seq_lens [B],
    block_tables [B, max_blocks]. ``max_query_len`` (a Python int, >= every query length) sizes the
    grid; a larger static bound is fine (extra programs exit at once), which keeps the launch
    CUDA-graph capturable. Rows of ``out`` outside the requests' ranges are left untouched.
    ``sliding_window`` (None / <= 0: full) and ``logit_softcap`` (None / 0: off) as in the decode kernel.
    """
    T, H, D = q.shape
    _, block_size, KVH, Dk = k_cache.shape
    assert Dk == D and v_cache.shape == k_cache.shape, "k/v cache shape mismatch"
    assert H % KVH == 0, f"num_heads {H} not a multiple of num_kv_heads {KVH}"
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1 and q.stride(-1) == 1
    if out is None:
        out = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
    assert out.shape[1:] == (H, D) and out.stride(-1) == 1
    B = seq_lens.shape[0]
    if B == 0 or T == 0 or max_query_len <= 0:
        return out
    cfg = prefill_config(D, q.dtype)
    block_m = block_m or cfg["block_m"]
    block_n = block_n or cfg["block_n"]
    num_warps = num_warps or cfg["num_warps"]
    num_stages = num_stages or cfg["num_stages"]
    window = int(sliding_window) if sliding_window is not None and sliding_window > 0 else 0
    softcap = float(logit_softcap) if logit_softcap else 0.0
    grid = (H, cdiv(max_query_len, block_m), B)
    _prefill_attn_kernel[grid](
        q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, out,
        float(scale) * LOG2E, window, softcap * LOG2E,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=H // KVH, HEAD_DIM=D, BLOCK_D=max(16, next_pow2(D)),
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=block_n, DOT_PRECISION=dot_precision(q.dtype),
        FP16_DOT=fp16_dot(q, k_cache), USE_WINDOW=window > 0, USE_SOFTCAP=softcap > 0.0,
        num_warps=num_warps, num_stages=num_stages)
    return out


def prefill_flops(query_lens: list[int], seq_lens: list[int], num_heads: int, head_dim: int) -> float:
    """FLOPs of the causal attention actually needed (QK^T and PV over visible pairs)."""
    pairs = 0
    for ql, sl in zip(query_lens, seq_lens):
        ctx = sl - ql
        pairs += ql * ctx + ql * (ql + 1) // 2
    return 4.0 * pairs * num_heads * head_dim
