"""The multi-LoRA shrink / expand kernels against their torch reference (``lora_ref``): tokens of
several adapters and of the base model mixed in one launch, fused slices of unequal widths (qkv with
GQA), padded ranks, slots with no tokens; in the interpreter on CPU, compiled (bf16 too) on CUDA."""
from __future__ import annotations

import pytest
import torch

from pagedserve.kernels.lora import lora_expand, lora_ref, lora_shrink, segment_metadata
from tests.kernels.conftest import HAS_CUDA

DEV = "cuda" if HAS_CUDA else "cpu"
DTYPES = [torch.float32] + ([torch.bfloat16] if HAS_CUDA else [])


def _case(T: int, K: int, widths: list[int], S: int, R: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    N = sum(widths)
    x = torch.randn(T, K, generator=g).to(DEV, dtype)
    y0 = torch.randn(T, N, generator=g).to(DEV, dtype)
    a = (torch.randn(S, len(widths), R, K, generator=g) * 0.1).to(DEV, dtype)
    b = (torch.randn(S, N, R, generator=g) * 0.1).to(DEV, dtype)
    a[:, :, R // 2:] = 0  # an adapter of lower rank than the padded R
    b[:, :, R // 2:] = 0
    slots = torch.randint(-1, S, (T,), generator=g).to(DEV)
    if S > 1:
        slots[slots == S - 1] = -1  # one slot holds an adapter but no token this step
    offs = [0]
    for w in widths:
        offs.append(offs[-1] + w)
    return x, y0, a, b, slots, offs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,K,widths,S,R", [
    (1, 64, [96], 1, 16),  # decode, one adapter
    (7, 48, [64, 16, 16], 3, 16),  # qkv, GQA widths, K not a multiple of the block
    (40, 64, [80, 80], 4, 32),  # gate_up, a prefill-sized batch
])
def test_shrink_expand_match_reference(dtype, T, K, widths, S, R):
    x, y0, a, b, slots, offs = _case(T, K, widths, S, R, dtype)
    ids, start, count = (m.to(DEV) for m in segment_metadata(slots, S))
    t = lora_shrink(x, a, ids, start, count)
    y = lora_expand(t, b, torch.tensor(offs, dtype=torch.int32, device=DEV), max(widths), ids, start, count, y0.clone())
    ref = lora_ref(x, y0.clone(), a, b, offs, slots)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y, ref, atol=tol, rtol=tol)
    base = slots == -1
    assert torch.equal(y[base], y0[base]), "base-model tokens must be untouched"
    assert not torch.equal(y[~base], y0[~base]), "adapter tokens must change"


@pytest.mark.parametrize("T,K,split,partials", [(1, 1024, None, 2), (3, 200, 3, 2), (5, 256, 4, 4), (2, 96, 8, 2)])
def test_split_k_shrink_matches_reference(T, K, split, partials):
    """The shrink's K partials (decode sizes), summed by the expand: K split unevenly, more splits
    than K tiles (fewer partials), the default split of a decode step."""
    x, y0, a, b, slots, offs = _case(T, K, [48, 16], 3, 16, torch.float32, seed=5)
    slots[0] = 0  # at least one token with an adapter
    ids, start, count = (m.to(DEV) for m in segment_metadata(slots, 3))
    t = lora_shrink(x, a, ids, start, count, split_k=split)
    assert t.shape[0] == partials  # whole 64-feature tiles per partial
    y = lora_expand(t, b, torch.tensor(offs, dtype=torch.int32, device=DEV), 48, ids, start, count, y0.clone())
    torch.testing.assert_close(y, lora_ref(x, y0.clone(), a, b, offs, slots), atol=1e-5, rtol=1e-5)


def test_fixed_grid_with_padding_tokens():
    """A CUDA-graph bucket is larger than the step: rows past the real tokens are in no segment and
    stay as they were; the launch shape depends only on the bucket."""
    x, y0, a, b, slots, offs = _case(12, 32, [32], 2, 16, torch.float32, seed=3)
    slots[8:] = -1  # padding rows
    ids, start, count = (m.to(DEV) for m in segment_metadata(slots, 2))
    t = lora_shrink(x, a, ids, start, count)
    y = lora_expand(t, b, torch.tensor(offs, dtype=torch.int32, device=DEV), 32, ids, start, count, y0.clone())
    torch.testing.assert_close(y, lora_ref(x, y0.clone(), a, b, offs, slots), atol=1e-5, rtol=1e-5)
    assert torch.equal(y[8:], y0[8:])
