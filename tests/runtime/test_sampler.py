"""Sampler filters and penalties on fixed logits, against HF transformers' logits processors."""
from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from pagedserve.layers.sampler import (Sampler, SamplingMetadata, apply_min_p, apply_penalties, apply_top_k,
                                       apply_top_p)

LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.5, -1.0, 3.0, 0.0, -2.0],
                       [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]])


def kept(x: torch.Tensor) -> list[list[int]]:
    return [sorted(torch.nonzero(row > float("-inf")).flatten().tolist()) for row in x]


def test_top_k_keeps_exactly_k_largest():
    out = apply_top_k(LOGITS.clone(), torch.tensor([2, 3]))
    assert kept(out) == [[0, 5], [5, 6, 7]]
    assert kept(apply_top_k(LOGITS.clone(), torch.tensor([0, 100]))) == [list(range(8))] * 2  # 0 / >V: all


def test_top_k_keeps_ties_like_hf():
    out = apply_top_k(LOGITS.clone(), torch.tensor([4, 4]))
    assert kept(out)[0] == [0, 1, 2, 3, 5]  # the 0.5 tie at 4th place keeps both
    hf = TopKLogitsWarper(4)(None, LOGITS[:1].clone())
    assert kept(out)[:1] == kept(hf)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.8, 0.95, 1.0])
def test_top_p_matches_hf(p):
    out = apply_top_p(LOGITS.clone(), torch.full((2,), p))
    hf = TopPLogitsWarper(p)(None, LOGITS.clone())
    assert kept(out) == kept(hf)


def test_top_p_exact_set():
    # probs ~ [0.211, 0.078, 0.047, 0.047, 0.011, 0.574, 0.029, 0.004]
    assert kept(apply_top_p(LOGITS[:1].clone(), torch.tensor([0.5]))) == [[5]]
    assert kept(apply_top_p(LOGITS[:1].clone(), torch.tensor([0.7]))) == [[0, 5]]
    assert kept(apply_top_p(LOGITS[:1].clone(), torch.tensor([0.8]))) == [[0, 1, 5]]


@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.2, 0.5, 0.9])
def test_min_p_matches_hf(min_p):
    out = apply_min_p(LOGITS.clone(), torch.full((2,), min_p))
    if min_p == 0.0:
        assert kept(out) == [list(range(8))] * 2
        return
    hf = MinPLogitsWarper(min_p)(None, LOGITS.clone())
    assert kept(out) == kept(hf)


def _meta(rows: int, **kw) -> SamplingMetadata:
    return SamplingMetadata(temperature=torch.ones(rows), all_greedy=False, **kw)


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_matches_hf(penalty):
    vocab = LOGITS.shape[1]
    prompt, output = [0, 3], [3, 5, 5]
    seq = torch.tensor([prompt + output])
    counts = torch.zeros(1, vocab, dtype=torch.int32)
    for t in output:
        counts[0, t] += 1
    mask = torch.zeros(1, vocab, dtype=torch.bool)
    mask[0, prompt] = True
    m = _meta(1, repetition_penalty=torch.tensor([penalty]), output_counts=counts, prompt_mask=mask)
    ours = apply_penalties(LOGITS[:1].clone(), m)
    hf = RepetitionPenaltyLogitsProcessor(penalty)(seq, LOGITS[:1].clone())
    assert torch.allclose(ours, hf)


def test_presence_and_frequency_penalties():
    counts = torch.tensor([[0, 2, 0, 1, 0, 0, 0, 3]], dtype=torch.int32)
    m = _meta(1, presence_penalty=torch.tensor([0.5]), frequency_penalty=torch.tensor([0.25]),
              output_counts=counts)
    ours = apply_penalties(LOGITS[1:].clone(), m)
    expect = LOGITS[1:] - 0.25 * counts.float() - 0.5 * (counts > 0).float()  # OpenAI's definition
    assert torch.allclose(ours, expect)


def test_temperature_and_filters_compose_like_hf():
    """temperature → top-k → top-p → min-p (HF's warper order) keeps the same tokens."""
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    m = _meta(4, top_k=torch.full((4,), 20), top_p=torch.full((4,), 0.9), min_p=torch.full((4,), 0.05))
    m.temperature = torch.full((4,), 0.7)
    x = logits / 0.7
    ours = apply_min_p(apply_top_p(apply_top_k(x, m.top_k), m.top_p), m.min_p)
    hf = logits.clone()
    for w in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.9), MinPLogitsWarper(0.05)):
        hf = w(None, hf)
    assert kept(ours) == kept(hf)


def test_sampler_only_samples_kept_tokens_and_greedy_rows_argmax():
    torch.manual_seed(1)
    logits = torch.randn(3, 30)
    m = _meta(3, top_k=torch.tensor([1, 3, 0]))
    m.temperature = torch.tensor([1.0, 1.0, 0.0])
    for _ in range(50):
        out = Sampler()(logits.clone(), m).sampled
        assert out[0] == logits[0].argmax()
        assert out[1] in logits[1].topk(3).indices
        assert out[2] == logits[2].argmax()


def test_seeded_noise_independent_of_batch():
    torch.manual_seed(2)
    logits = torch.randn(1, 100)
    g1 = torch.Generator().manual_seed(42)
    g2 = torch.Generator().manual_seed(42)
    alone = [Sampler()(logits.clone(), _meta(1, generators={0: g1})).sampled.item() for _ in range(10)]
    batch = torch.cat([torch.randn(2, 100), logits])
    together = [Sampler()(batch.clone(), _meta(3, generators={2: g2})).sampled[2].item() for _ in range(10)]
    assert alone == together


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_torch_path_temperature_follows_the_tempered_softmax(temperature):
    """The torch path (not the fused kernel): rows sampled at temperature T follow softmax(logits / T)
    (Pearson's chi-square, fixed seed), in a batch that also holds a greedy row."""
    torch.manual_seed(3)
    vocab, n = 10, 20_000
    logits = torch.randn(vocab) * 1.5
    batch = logits.expand(n + 1, vocab).clone()
    temps = torch.full((n + 1,), temperature)
    temps[n] = 0.0  # a greedy row rides along
    sampler = Sampler(fused=False)
    sampled = sampler(batch, SamplingMetadata(temperature=temps, all_greedy=False)).sampled
    assert not sampler.last_fused
    assert sampled[n] == logits.argmax()
    observed = torch.bincount(sampled[:n], minlength=vocab).double()
    expected = (logits.double() / temperature).softmax(-1) * n
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    p_value = float(torch.special.gammaincc(torch.tensor((vocab - 1) / 2.0), torch.tensor(chi2 / 2.0)))
    assert p_value > 1e-3, (temperature, chi2, p_value)
