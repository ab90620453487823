"""KV-cache write by slot mapping against ``store_kv_ref``."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pagedserve.kernels.kv_store import store_kv_ref
from pagedserve.kernels.kv_store_triton import store_kv
from tests.kernels.paged_utils import DEVICE, DTYPES, randn


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block_size,kv_heads,head_dim", [(16, 2, 64), (32, 3, 32), (16, 1, 128)])
def test_store_kv_matches_ref_with_padding(dtype, block_size, kv_heads, head_dim):
    gen = torch.Generator().manual_seed(0)
    num_blocks, T = 6, 11
    # k/v as strided views of a fused qkv buffer, like the model produces them
    qkv = randn(T, 2 + 2 * kv_heads, head_dim, dtype=dtype, gen=gen)
    k, v = qkv[:, 2:2 + kv_heads], qkv[:, 2 + kv_heads:]
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:T]
    slots[[2, 7]] = -1  # padding tokens
    slots = slots.to(DEVICE)
    # the cache is one layer's view of a [layers, 2, blocks, bs, kvh, d] tensor
    big = torch.full((2, 2, num_blocks, block_size, kv_heads, head_dim), 7.0, dtype=dtype, device=DEVICE)
    ref_big = big.clone()
    store_kv(k, v, big[1, 0], big[1, 1], slots)
    store_kv_ref(k, v, ref_big[1, 0], ref_big[1, 1], slots)
    assert torch.equal(big, ref_big)  # a pure copy: bit-exact, nothing else touched


def test_store_kv_casts_to_cache_dtype():
    gen = torch.Generator().manual_seed(1)
    k = randn(3, 2, 16, dtype=torch.float32, gen=gen)
    v = randn(3, 2, 16, dtype=torch.float32, gen=gen)
    kc = torch.zeros(2, 16, 2, 16, dtype=torch.float16, device=DEVICE)
    vc = torch.zeros_like(kc)
    slots = torch.tensor([0, 17, 31], device=DEVICE)
    store_kv(k, v, kc, vc, slots)
    assert torch.equal(kc.view(-1, 2, 16)[slots], k.half())
    assert torch.equal(vc.view(-1, 2, 16)[slots], v.half())


def test_store_kv_empty_is_noop():
    gen = torch.Generator().manual_seed(2)
    kc, vc = randn(1, 16, 1, 16, dtype=torch.float32, gen=gen), randn(1, 16, 1, 16, dtype=torch.float32, gen=gen)
    k0, v0 = kc.clone(), vc.clone()
    store_kv(torch.empty(0, 1, 16, device=DEVICE), torch.empty(0, 1, 16, device=DEVICE), kc, vc,
             torch.empty(0, dtype=torch.int64, device=DEVICE))
    assert torch.equal(kc, k0) and torch.equal(vc, v0)  # no token: no write, no error


def test_kv_store_module_is_triton_free():
    # importing the engine's attention backend must not import triton (see conftest.py)
    code = "import sys, pagedserve.attention.backend; sys.exit('triton' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
