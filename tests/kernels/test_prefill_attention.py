"""Paged prefill / extend attention (varlen, chunked, GQA) against the torch reference."""
from __future__ import annotations

import pytest
import torch

from pagedserve.kernels.paged_attention_ref import paged_attention_ref
from pagedserve.kernels.prefill_attention import paged_prefill_attention, prefill_flops
from tests.kernels.paged_utils import DEVICE, DTYPES, assert_close, make_paged_cache, poisoned, randn


def _run(reqs, block_size, heads, kv_heads, head_dim, dtype, block_m, block_n, seed=0, lead_rows=0,
         max_query_len=None):
    """reqs: [(query_len, seq_len)]; ``lead_rows`` extra q rows before the requests (as decodes
    in a mixed batch) which the kernel must leave untouched."""
    gen = torch.Generator().manual_seed(seed)
    q_lens = [ql for ql, _ in reqs]
    kc, vc, bt, sl = make_paged_cache([s for _, s in reqs], block_size, kv_heads, head_dim, dtype, gen=gen)
    T = lead_rows + sum(q_lens)
    q = randn(T, heads, head_dim, dtype=dtype, gen=gen)
    qsl = torch.tensor([lead_rows] + q_lens, dtype=torch.int64).cumsum(0).to(torch.int32).to(DEVICE)
    scale = head_dim ** -0.5
    out = poisoned((T, heads, head_dim), dtype)
    paged_prefill_attention(q, kc, vc, qsl, sl, bt, scale, max_query_len or max(q_lens), out=out,
                            block_m=block_m, block_n=block_n)
    qsl0 = qsl - lead_rows
    ref = paged_attention_ref(q[lead_rows:], kc, vc, qsl0, sl, bt, scale)
    assert_close(out[lead_rows:], ref, dtype, f"bm={block_m} bn={block_n}")
    assert torch.isnan(out[:lead_rows]).all(), "rows outside the requests were written"


# (q_len, seq_len): single token, fresh prompts, chunks that start mid-sequence / mid-block
REQS = [(1, 1), (7, 7), (20, 50), (33, 49), (5, 300)]
CASES = [
    # block_size, H, KVH, D, block_m, block_n
    (16, 4, 4, 64, 16, 16),
    (32, 6, 2, 64, 32, 16),
    (16, 8, 2, 128, 16, 32),
    (32, 8, 2, 64, 16, 64),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"bs{c[0]}-h{c[1]}kv{c[2]}-d{c[3]}-m{c[4]}n{c[5]}")
def test_prefill_matches_ref(case, dtype):
    bs, h, kvh, d, bm, bn = case
    _run(REQS, bs, h, kvh, d, dtype, bm, bn)


def test_prefill_default_tiles_and_offset_rows():
    """The GPU default tile config (128 x 64) in the interpreter; the batch is a slice of a larger
    one (absolute query_start_loc), and the grid is sized by a larger static bound."""
    _run([(3, 70), (130, 130)], 16, 6, 2, 64, torch.float16, None, None, seed=1, lead_rows=3,
         max_query_len=300)


def test_prefill_long_prefix_chunk():
    """A chunk of a long prompt after a prefix hit (many unmasked KV tiles, then the diagonal)."""
    _run([(24, 400)], 32, 4, 1, 64, torch.float32, 16, 32, seed=2)


def test_prefill_flops_counts_causal_pairs():
    # 2 queries after 3 cached tokens: 4 + 5 visible pairs
    assert prefill_flops([2], [5], 1, 1) == 4.0 * 9
