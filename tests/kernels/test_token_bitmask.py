"""The structured-output token bitmask in the sampler: same masking as xgrammar's kernel, on the
torch path and on the fused (Triton) sampling path."""
from __future__ import annotations

import pytest
import torch

from pagedserve.layers.sampler import Sampler, SamplingMetadata, apply_token_bitmask

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _bitmask(rows: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    allowed = torch.rand(rows, vocab, generator=g) < 0.05
    allowed[:, 7] = True  # at least one token per row
    words = (vocab + 31) // 32
    padded = torch.zeros(rows, words * 32, dtype=torch.bool)
    padded[:, :vocab] = allowed
    bits = (padded.view(rows, words, 32).to(torch.int64) << torch.arange(32)).sum(-1)
    return allowed, bits.to(torch.int64).bitwise_and(0xFFFFFFFF).to(torch.int32)


def test_torch_op_matches_xgrammar_kernel(monkeypatch):
    import pagedserve.layers.sampler as sampler_mod

    pytest.importorskip("xgrammar")
    logits = torch.randn(5, 999)
    _, bm = _bitmask(5, 999, 2)
    with_xgr = apply_token_bitmask(logits, None, bm)
    monkeypatch.setattr(sampler_mod, "_XGR_KERNEL", [None])  # as without xgrammar (the GPU machine today)
    assert torch.equal(apply_token_bitmask(logits, None, bm), with_xgr)
    assert torch.equal(apply_token_bitmask(logits, torch.arange(5), bm), with_xgr)


def test_matches_xgrammar_kernel():
    xgr = pytest.importorskip("xgrammar")
    logits = torch.randn(6, 1000)
    allowed, bm = _bitmask(4, 1000, 0)
    rows = torch.tensor([0, 2, 3, 5])
    ours = apply_token_bitmask(logits, rows, bm)
    ref = logits.clone()
    full = torch.full((6, bm.shape[1]), -1, dtype=torch.int32)
    full[rows] = bm
    xgr.apply_token_bitmask_inplace(ref, full)
    assert torch.equal(ours, ref)
    assert torch.equal(ours[1], logits[1])  # rows without a grammar are untouched
    every = apply_token_bitmask(logits[rows], None, bm)  # a bitmask row for every logits row
    assert torch.equal(every, ref[rows])


@pytest.mark.parametrize("fused", [False, True])
def test_sampler_only_picks_allowed_tokens(fused):
    vocab = 3000
    logits = torch.randn(8, vocab, device=DEVICE)
    allowed, bm = _bitmask(8, vocab, 1)
    s = Sampler(fused=fused)
    for greedy in (True, False):
        meta = SamplingMetadata(temperature=torch.full((8,), 0.0 if greedy else 1.0, device=DEVICE),
                                all_greedy=greedy, token_bitmask=(None, bm.to(DEVICE)))
        out = s(logits, meta).sampled.cpu()
        assert s.last_fused == fused
        assert all(allowed[i, t] for i, t in enumerate(out.tolist()))
        if greedy:
            masked = logits.cpu().masked_fill(~allowed, float("-inf"))
            assert out.tolist() == masked.argmax(-1).tolist()
