"""Fused temperature sampling kernel vs torch: greedy rows equal ``argmax`` (ties to the lowest
index), sampled rows follow ``softmax(l / T)``, a seed reproduces its draw, and the Sampler uses
the kernel only for batches it can serve (interpreter on CPU)."""
from __future__ import annotations

import math

import pytest
import torch

from pagedserve.kernels.sampling import BLOCK_V, sample_fused
from pagedserve.layers.sampler import Sampler, SamplingMetadata
from tests.kernels.paged_utils import DEVICE


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("vocab", [7, BLOCK_V + 5, 3 * BLOCK_V])
def test_greedy_rows_equal_argmax(dtype, vocab):
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(5, vocab, generator=g).to(dtype)
    logits[1, :] = 1.0  # all tied: the first index wins
    logits[2, [3, vocab - 1]] = 50.0  # tie across slices
    logits = logits.to(DEVICE)
    out = sample_fused(logits, torch.zeros(5, device=DEVICE), seed=123)
    assert out.dtype == torch.long
    assert out.tolist() == logits.float().argmax(dim=-1).tolist()
    assert out[1].item() == 0 and out[2].item() == 3


def test_sampled_rows_follow_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    temp = 0.7
    n = 600  # the interpreter runs one program per row (~25 ms each)
    batch = logits.repeat(n, 1).to(DEVICE)  # each row its own noise (Philox counter = row * V + col)
    out = sample_fused(batch, torch.full((n,), temp, device=DEVICE), seed=7).cpu()
    freq = torch.bincount(out, minlength=6).double() / n
    p = torch.softmax(logits.double() / temp, dim=0)
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 5 * sigma + 1e-3).all(), (freq, p)
    chi2 = float((((freq - p) ** 2) / p).sum() * n)
    assert chi2 < 25.0, chi2  # 5 degrees of freedom: p(chi2 > 25) < 2e-4


def test_seed_reproduces_and_temperature_rows_mix():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 300, generator=g).to(DEVICE)
    temps = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.5, 1.0], device=DEVICE)
    a = sample_fused(logits, temps, seed=11)
    b = sample_fused(logits, temps, seed=11)
    assert a.tolist() == b.tolist()
    greedy = logits.argmax(dim=-1)
    assert a[0] == greedy[0] and a[2] == greedy[2]
    draws = {tuple(sample_fused(logits, temps, seed=s).tolist()) for s in range(8)}
    assert len(draws) > 1  # another seed, another draw


def test_extreme_temperatures():
    logits = torch.tensor([[0.0, 10.0, 9.0, -5.0]] * 60, device=DEVICE)
    cold = sample_fused(logits, torch.full((60,), 1e-4, device=DEVICE), seed=3)
    assert (cold == 1).all()  # T -> 0 is greedy
    hot = sample_fused(logits, torch.full((60,), 1e4, device=DEVICE), seed=3)
    assert len(set(hot.tolist())) == 4  # T -> inf is uniform
    assert math.isfinite(float(hot.float().mean()))


def test_sampler_takes_the_fused_path_only_when_it_can():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 50, generator=g).to(DEVICE)
    s = Sampler(fused=True)
    greedy = SamplingMetadata(temperature=torch.zeros(4, device=DEVICE), all_greedy=True)
    assert s(logits, greedy).sampled.tolist() == logits.argmax(dim=-1).tolist()
    assert s.last_fused
    meta = SamplingMetadata(temperature=torch.ones(4, device=DEVICE), all_greedy=False)
    assert s(logits, meta).sampled.shape == (4,) and s.last_fused
    with_top_p = SamplingMetadata(temperature=torch.ones(4, device=DEVICE), all_greedy=False,
                                  top_p=torch.full((4,), 0.9, device=DEVICE))
    s(logits, with_top_p)
    assert not s.last_fused
    with_logprobs = SamplingMetadata(temperature=torch.zeros(4, device=DEVICE), all_greedy=True, max_num_logprobs=2)
    out = s(logits, with_logprobs)
    assert not s.last_fused and out.logprobs is not None
    seeded = SamplingMetadata(temperature=torch.ones(4, device=DEVICE), all_greedy=False,
                              generators={0: torch.Generator(device=DEVICE).manual_seed(5)})
    s(logits, seeded)
    assert not s.last_fused
    assert Sampler().fused == torch.cuda.is_available()  # off CUDA the default is the torch path
