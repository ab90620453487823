"""``--kv-cache-dtype fp8``: the store saturates and rounds K/V into an fp8 cache like
``store_kv_ref``; decode and prefill attention over fp8 caches equal the torch reference over
the same caches (which widens them to the query dtype)."""
from __future__ import annotations

import pytest
import torch

from pagedserve.kernels.decode_attention import paged_decode_attention
from pagedserve.kernels.kv_store import fp8_limit, store_kv_ref
from pagedserve.kernels.kv_store_triton import store_kv
from pagedserve.kernels.paged_attention_ref import paged_attention_ref
from pagedserve.kernels.prefill_attention import paged_prefill_attention
from tests.kernels.conftest import INTERPRETED
from tests.kernels.paged_utils import DEVICE, assert_close, assert_fp8_matches, make_paged_cache, poisoned, randn

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]
QDTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16


@pytest.mark.parametrize("cache_dtype", FP8, ids=str)
def test_store_kv_into_fp8_saturates_and_rounds_like_the_reference(cache_dtype):
    gen = torch.Generator().manual_seed(0)
    k = randn(9, 2, 32, dtype=torch.float32, gen=gen, scale=4)
    v = randn(9, 2, 32, dtype=torch.float32, gen=gen)
    k[0, 0, :4] = torch.tensor([1e6, -1e6, 500.0, -70000.0])  # beyond e4m3's 448 / e5m2's 57,344
    slots = torch.tensor([3, 0, 17, -1, 5, 30, 8, 9, 1], device=DEVICE)
    caches = [torch.zeros(4, 8, 2, 32, dtype=cache_dtype, device=DEVICE) for _ in range(4)]
    store_kv(k, v, caches[0], caches[1], slots)
    store_kv_ref(k, v, caches[2], caches[3], slots)
    limit = fp8_limit(cache_dtype)
    assert limit == float(torch.finfo(cache_dtype).max)
    for got, want in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.isfinite(got.float()).all()
        assert float(got.float().abs().max()) <= limit
        assert_fp8_matches(got, want, INTERPRETED)
    assert fp8_limit(torch.bfloat16) is None and fp8_limit(torch.float32) is None


def _fp8(cache: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return cache.float().clamp(-fp8_limit(dtype), fp8_limit(dtype)).to(dtype)  # NaN poison stays NaN


@pytest.mark.parametrize("cache_dtype", FP8, ids=str)
def test_decode_attention_over_an_fp8_cache(cache_dtype):
    gen = torch.Generator().manual_seed(1)
    kc, vc, bt, sl = make_paged_cache([1, 17, 40, 130], 16, 2, 64, torch.float32, gen=gen)
    kc, vc = _fp8(kc, cache_dtype), _fp8(vc, cache_dtype)
    q = randn(4, 8, 64, dtype=QDTYPE, gen=gen)
    qsl = torch.arange(5, dtype=torch.int32, device=DEVICE)
    ref = paged_attention_ref(q, kc, vc, qsl, sl, bt, 0.125)
    for splits in (1, 3):
        out = paged_decode_attention(q, kc, vc, bt, sl, 0.125, out=poisoned((4, 8, 64), QDTYPE), num_splits=splits,
                                     tile_n=16)
        assert_close(out, ref, QDTYPE, f"decode, fp8 cache, {splits} splits")


def test_prefill_attention_over_an_fp8_cache():
    gen = torch.Generator().manual_seed(2)
    reqs = [(7, 7), (20, 50), (5, 33)]
    kc, vc, bt, sl = make_paged_cache([s for _, s in reqs], 16, 2, 64, torch.float32, gen=gen)
    kc, vc = _fp8(kc, torch.float8_e4m3fn), _fp8(vc, torch.float8_e4m3fn)
    T = sum(q for q, _ in reqs)
    q = randn(T, 8, 64, dtype=QDTYPE, gen=gen)
    qsl = torch.tensor([0] + [q for q, _ in reqs]).cumsum(0).to(torch.int32).to(DEVICE)
    out = poisoned((T, 8, 64), QDTYPE)
    paged_prefill_attention(q, kc, vc, qsl, sl, bt, 0.125, 20, out=out, block_m=16, block_n=16)
    assert_close(out, paged_attention_ref(q, kc, vc, qsl, sl, bt, 0.125), QDTYPE, "prefill, fp8 cache")
