"""Paged decode attention (split-KV, GQA) against the torch reference."""
from __future__ import annotations

import pytest
import torch

from pagedserve.kernels.decode_attention import decode_num_splits, paged_decode_attention
from pagedserve.kernels.paged_attention_ref import paged_attention_ref
from tests.kernels.paged_utils import DEVICE, DTYPES, assert_close, make_paged_cache, poisoned, randn


def _run(seq_lens, block_size, heads, kv_heads, head_dim, dtype, num_splits, tile_n, seed=0, q_strided=False):
    gen = torch.Generator().manual_seed(seed)
    kc, vc, bt, sl = make_paged_cache(seq_lens, block_size, kv_heads, head_dim, dtype, gen=gen)
    B = len(seq_lens)
    if q_strided:  # a view into a wider [B, H + 2*KVH, D] buffer, like the qkv split
        q = randn(B, heads + 2 * kv_heads, head_dim, dtype=dtype, gen=gen)[:, :heads]
    else:
        q = randn(B, heads, head_dim, dtype=dtype, gen=gen)
    scale = head_dim ** -0.5
    qsl = torch.arange(B + 1, dtype=torch.int32, device=DEVICE)
    ref = paged_attention_ref(q, kc, vc, qsl, sl, bt, scale)
    out = poisoned((B, heads, head_dim), dtype)
    res = paged_decode_attention(q, kc, vc, bt, sl, scale, out=out, num_splits=num_splits, tile_n=tile_n)
    assert res is out
    assert_close(out, ref, dtype, f"splits={num_splits}")


CASES = [
    # seq_lens, block_size, H, KVH, D, num_splits, tile_n
    ([1, 15, 16, 17, 300], 16, 4, 4, 64, 1, 32),     # MHA, one split (direct write)
    ([1, 31, 32, 33, 290], 32, 6, 2, 64, 3, 32),     # GQA 3 (SmolLM2-like), empty splits for short rows
    ([1, 15, 16, 17, 300], 16, 8, 2, 128, 4, 16),    # GQA 4, D=128, many tiles per split
    ([17, 260], 32, 8, 2, 128, 7, 64),               # more splits than tiles for the short row
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"bs{c[1]}-h{c[2]}kv{c[3]}-d{c[4]}-s{c[5]}")
def test_decode_matches_ref(case, dtype):
    seq_lens, bs, h, kvh, d, splits, tile_n = case
    _run(seq_lens, bs, h, kvh, d, dtype, splits, tile_n)


def test_decode_strided_q_auto_splits():
    _run([5, 40, 129], 16, 6, 2, 64, torch.float16, None, 32, seed=3, q_strided=True)


def test_decode_non_pow2_head_dim():
    _run([3, 33], 16, 4, 2, 96, torch.float32, 2, 32, seed=4)


def test_decode_zero_length_rows_give_zeros():
    """Padding rows of a CUDA-graph batch (seq_len 0) must come out finite (zeros)."""
    gen = torch.Generator().manual_seed(5)
    kc, vc, bt, sl = make_paged_cache([20, 1], 16, 2, 64, torch.float32, gen=gen)
    sl = torch.tensor([20, 0], dtype=torch.int32, device=DEVICE)
    q = randn(2, 4, 64, dtype=torch.float32, gen=gen)
    for splits in (1, 3):
        out = poisoned((2, 4, 64), torch.float32)
        paged_decode_attention(q, kc, vc, bt, sl, 0.125, out=out, num_splits=splits, tile_n=16)
        qsl = torch.arange(2, dtype=torch.int32, device=DEVICE)
        ref = paged_attention_ref(q[:1], kc, vc, qsl, sl[:1], bt[:1], 0.125)
        assert_close(out[:1], ref, torch.float32)
        assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_num_splits_rule_is_static_and_bounded():
    # small batch, long bound -> several splits, never more than bound / min_tokens
    h200 = dict(sm_count=132)
    s = decode_num_splits(1, 8, 8192, "cpu", programs_per_sm=2, min_tokens=256, max_splits=64, **h200)
    assert s == 8192 // 256  # 33 wanted, capped by the bound
    assert decode_num_splits(1, 8, 2048, "cpu", **h200) == 2048 // 256
    assert decode_num_splits(256, 8, 8192, "cpu", **h200) == 1  # plenty of programs already
    assert decode_num_splits(8, 8, 8192, "cpu", programs_per_sm=2, **h200) == 5
    assert decode_num_splits(16, 8, 8192, "cpu", **h200) == 3
    assert decode_num_splits(32, 8, 8192, "cpu", **h200) == 1  # two splits would not pay for the merge
    assert decode_num_splits(1, 8, 100, "cpu", **h200) == 1  # short contexts never split
    assert decode_num_splits(1, 1, 10 ** 6, "cpu", max_splits=16, **h200) == 16
