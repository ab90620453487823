"""Sliding-window attention and logit soft-capping in the paged decode and prefill kernels, against
the torch reference. Windows are smaller than the contexts; cache rows that no query of the step
may see (left of every window) are NaN, so a kernel that reads them fails."""
from __future__ import annotations

import pytest
import torch

from pagedserve.kernels.decode_attention import paged_decode_attention
from pagedserve.kernels.paged_attention_ref import attention_mask, paged_attention_ref
from pagedserve.kernels.prefill_attention import paged_prefill_attention
from tests.kernels.paged_utils import DEVICE, DTYPES, assert_close, make_paged_cache, poisoned, randn


def _poison_outside(kc, vc, bt, reqs, window):
    """NaN every cached row left of the first query's window (no query of the step sees it)."""
    bs = kc.shape[1]
    for i, (ql, sl) in enumerate(reqs):
        for p in range(max(0, sl - ql - window + 1)):
            b = int(bt[i, p // bs])
            kc[b, p % bs] = float("nan")
            vc[b, p % bs] = float("nan")


def _ref(q, kc, vc, qsl, sl, bt, scale, window, cap):
    # the reference gathers whole rows; zero the poison it would multiply by a zero weight
    return paged_attention_ref(q, kc.nan_to_num(0.0), vc.nan_to_num(0.0), qsl, sl, bt, scale,
                               sliding_window=window, logit_softcap=cap)


def test_reference_mask_matches_hf_semantics():
    """Window W: query p sees p-W+1 .. p (HF: kv_idx > q_idx - sliding_window)."""
    m = attention_mask(6, 2, 3, torch.device("cpu"))
    assert m.tolist() == [[False, False, True, True, True, False], [False, False, False, True, True, True]]


DECODE = [
    # seq_lens, block_size, H, KVH, D, window, softcap, splits, tile_n
    ([1, 9, 40, 77], 8, 4, 2, 32, 16, None, 1, 16),
    ([3, 40, 130], 16, 6, 2, 64, 33, None, 3, 16),
    ([5, 64], 16, 4, 4, 32, 8, 30.0, 2, 16),
    ([20, 50], 16, 4, 2, 32, None, 5.0, 1, 16),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DECODE, ids=lambda c: f"w{c[5]}-cap{c[6]}-s{c[7]}")
def test_decode_window_softcap(case, dtype):
    seq_lens, bs, h, kvh, d, window, cap, splits, tile_n = case
    gen = torch.Generator().manual_seed(7)
    kc, vc, bt, sl = make_paged_cache(seq_lens, bs, kvh, d, dtype, gen=gen)
    if window:
        _poison_outside(kc, vc, bt, [(1, s) for s in seq_lens], window)
    B = len(seq_lens)
    q = randn(B, h, d, dtype=dtype, gen=gen, scale=3.0)  # large scores: the cap matters
    qsl = torch.arange(B + 1, dtype=torch.int32, device=DEVICE)
    out = poisoned((B, h, d), dtype)
    paged_decode_attention(q, kc, vc, bt, sl, d ** -0.5, out=out, num_splits=splits, tile_n=tile_n,
                           sliding_window=window, logit_softcap=cap)
    assert_close(out, _ref(q, kc, vc, qsl, sl, bt, d ** -0.5, window, cap), dtype, f"w={window} cap={cap}")


def test_decode_window_auto_splits():
    """Without a pinned split count the window bounds the split rule; result unchanged."""
    gen = torch.Generator().manual_seed(8)
    kc, vc, bt, sl = make_paged_cache([600, 3], 16, 2, 32, torch.float32, gen=gen)
    _poison_outside(kc, vc, bt, [(1, 600), (1, 3)], 24)
    q = randn(2, 4, 32, dtype=torch.float32, gen=gen)
    out = paged_decode_attention(q, kc, vc, bt, sl, 0.2, sliding_window=24)
    qsl = torch.arange(3, dtype=torch.int32, device=DEVICE)
    assert_close(out, _ref(q, kc, vc, qsl, sl, bt, 0.2, 24, None), torch.float32)


# (q_len, seq_len): a fresh prompt longer than the window, a chunk across the window boundary, a
# short chunk far into a long context, a single token
PREFILL_REQS = [(40, 40), (13, 29), (6, 90), (1, 17)]
PREFILL = [
    # block_size, H, KVH, D, block_m, block_n, window, softcap
    (8, 4, 2, 32, 16, 16, 8, None),
    (16, 4, 4, 32, 16, 16, 13, None),
    (16, 6, 2, 64, 32, 16, 20, 20.0),
    (8, 4, 2, 32, 16, 32, None, 10.0),
    (8, 4, 2, 32, 16, 16, 1, None),  # window 1: each token sees only itself
    (8, 4, 2, 32, 16, 16, 40, None),  # windows wider than a tile: unmasked tiles inside every row's window
    (16, 6, 3, 32, 16, 16, 50, 20.0),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PREFILL, ids=lambda c: f"bs{c[0]}-m{c[4]}n{c[5]}-w{c[6]}-cap{c[7]}")
def test_prefill_window_softcap(case, dtype):
    bs, h, kvh, d, bm, bn, window, cap = case
    gen = torch.Generator().manual_seed(9)
    reqs = PREFILL_REQS
    kc, vc, bt, sl = make_paged_cache([s for _, s in reqs], bs, kvh, d, dtype, gen=gen)
    if window:
        _poison_outside(kc, vc, bt, reqs, window)
    q_lens = [ql for ql, _ in reqs]
    lead = 2  # rows of other requests before these (a mixed batch's decodes): left untouched
    T = lead + sum(q_lens)
    q = randn(T, h, d, dtype=dtype, gen=gen, scale=3.0)
    qsl = torch.tensor([lead] + q_lens, dtype=torch.int64).cumsum(0).to(torch.int32).to(DEVICE)
    out = poisoned((T, h, d), dtype)
    paged_prefill_attention(q, kc, vc, qsl, sl, bt, d ** -0.5, max(q_lens), out=out, block_m=bm, block_n=bn,
                            sliding_window=window, logit_softcap=cap)
    ref = _ref(q[lead:], kc, vc, qsl - lead, sl, bt, d ** -0.5, window, cap)
    assert_close(out[lead:], ref, dtype, f"w={window} cap={cap}")
    assert torch.isnan(out[:lead]).all()


def test_triton_backend_passes_window_and_cap():
    """A mixed step (decodes + chunks) through the Triton backend equals the torch backend."""
    from pagedserve.attention.backend import TorchAttentionBackend
    from pagedserve.attention.triton_backend import TritonAttentionBackend
    from tests.kernels.paged_utils import make_batch

    gen = torch.Generator().manual_seed(10)
    q, k, v, kc, vc, meta = make_batch([(1, 30), (1, 5), (12, 40), (9, 9)], 8, 4, 2, 32, torch.float32,
                                       gen=gen, pad_tokens=3)
    kw = dict(sliding_window=10, logit_softcap=15.0)
    ref = TorchAttentionBackend().forward(q, k, v, kc.clone(), vc.clone(), meta, 0.25, **kw)
    out = TritonAttentionBackend().forward(q, k, v, kc, vc, meta, 0.25, **kw)
    n = q.shape[0] - 3
    assert_close(out[:n], ref[:n], torch.float32, "backend")


def test_gemma2_shape_default_tiles():
    """Gemma 2's head_dim 256 with window + soft-cap at the default (16-bit) launch configuration."""
    dtype = torch.float16
    gen = torch.Generator().manual_seed(11)
    reqs = [(1, 70), (1, 9), (40, 90)]
    kc, vc, bt, sl = make_paged_cache([s for _, s in reqs], 16, 4, 256, dtype, gen=gen)
    _poison_outside(kc, vc, bt, reqs, 32)
    q_lens = [ql for ql, _ in reqs]
    q = randn(sum(q_lens), 8, 256, dtype=dtype, gen=gen, scale=2.0)
    qsl = torch.tensor([0] + q_lens, dtype=torch.int64).cumsum(0).to(torch.int32).to(DEVICE)
    out = poisoned(q.shape, dtype)
    kw = dict(sliding_window=32, logit_softcap=50.0)
    paged_decode_attention(q[:2], kc, vc, bt[:2], sl[:2], 256 ** -0.5, out=out[:2], **kw)
    paged_prefill_attention(q, kc, vc, qsl[2:], sl[2:], bt[2:], 256 ** -0.5, 40, out=out, **kw)
    assert_close(out, _ref(q, kc, vc, qsl, sl, bt, 256 ** -0.5, 32, 50.0), dtype, "gemma2 shape")
