"""``TritonAttentionBackend.forward`` against ``TorchAttentionBackend.forward`` on whole steps."""
from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagedserve.attention.backend import TorchAttentionBackend
from pagedserve.attention.selector import get_attention_backend
from pagedserve.attention.triton_backend import TritonAttentionBackend
from tests.kernels.paged_utils import DEVICE, assert_close, make_batch


class _PoisonedBackend(TritonAttentionBackend):
    def new_output(self, q):
        return torch.full(q.shape, float("nan"), dtype=q.dtype, device=q.device)


def _check(reqs, block_size, heads, kv_heads, head_dim, dtype, seed, pad_tokens=0, **backend_kw):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, kc, vc, meta = make_batch(reqs, block_size, heads, kv_heads, head_dim, dtype, gen=gen,
                                       pad_tokens=pad_tokens)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    scale = head_dim ** -0.5
    ref = TorchAttentionBackend().forward(q, k, v, kc_ref, vc_ref, meta, scale)
    be = _PoisonedBackend(**backend_kw)
    be.decode_kwargs = dict(tile_n=16)
    be.prefill_kwargs = dict(block_m=16, block_n=16)
    out = be.forward(q, k, v, kc, vc, meta, scale)
    n = sum(ql for ql, _ in reqs)
    assert out.shape == q.shape
    assert_close(out[:n], ref[:n], dtype, f"reqs={reqs}")
    assert torch.equal(out[n:], torch.zeros_like(out[n:])), "padding rows must be zeros"
    # the new K/V were stored exactly like the reference store (NaN elsewhere on both sides)
    assert torch.equal(kc.nan_to_num(123.0), kc_ref.nan_to_num(123.0))
    assert torch.equal(vc.nan_to_num(123.0), vc_ref.nan_to_num(123.0))
    # out=: written in place into a view of a wider static buffer (the piecewise graphs' attn_out)
    buf = torch.full((q.shape[0] + 3, q.shape[1] * q.shape[2]), float("nan"), dtype=q.dtype, device=q.device)
    view = buf[:q.shape[0]].view(q.shape)
    res = be.forward(q, k, v, kc, vc, meta, scale, out=view)
    assert res.data_ptr() == buf.data_ptr() and torch.equal(res, out)
    assert torch.isnan(buf[q.shape[0]:]).all()


def test_mixed_batch_decodes_and_prefill_chunks():
    # 3 decodes (lengths 1, bs+1, a few hundred), a fresh prompt and a mid-sequence chunk, padding
    reqs = [(1, 1), (1, 17), (1, 200), (9, 9), (20, 61)]
    _check(reqs, 16, 6, 2, 64, torch.float16, seed=0, pad_tokens=2, decode_splits=3)


def test_decode_only_with_static_bound():
    reqs = [(1, 33), (1, 64), (1, 5)]
    _check(reqs, 32, 8, 2, 128, torch.float32, seed=1, max_seq_len_bound=4096)


def test_prefill_only():
    _check([(12, 12), (5, 40)], 16, 4, 4, 64, torch.float32, seed=2)


def test_factory_returns_triton_backend():
    assert isinstance(get_attention_backend("triton", DEVICE), TritonAttentionBackend)


@settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    n_decodes=st.integers(0, 3),
    prefills=st.lists(st.tuples(st.integers(2, 24), st.integers(0, 60)), min_size=0, max_size=2),
    decode_lens=st.lists(st.integers(1, 90), min_size=3, max_size=3),
    block_size=st.sampled_from([16, 32]),
    group=st.sampled_from([1, 3, 4]),
    kv_heads=st.sampled_from([1, 2]),
    splits=st.sampled_from([None, 1, 2, 5]),
    seed=st.integers(0, 2 ** 16),
)
def test_backend_property(n_decodes, prefills, decode_lens, block_size, group, kv_heads, splits, seed):
    reqs = [(1, decode_lens[i]) for i in range(n_decodes)] + [(ql, ql + ctx) for ql, ctx in prefills]
    if not reqs:
        reqs = [(1, 1)]
    _check(reqs, block_size, group * kv_heads, kv_heads, 32, torch.float32, seed=seed, decode_splits=splits)
