"""The dot-free decode GEMV (``kernels/wna16_gemv.py``) against the torch reference
(``kernels/wna16_ref.py``): M 1..4, 4 and 8 bits, symmetric and with zeros, one group per K tile /
per word (groups smaller than the tile) / per channel, act-order ``g_idx`` (per-element scales), bias,
split-K (the reduce kernel) and direct stores, ragged N and K, fp32 / fp16 (bf16 on a GPU)
activations; and the dispatch of ``kernels.wna16.wna16_linear``. In Triton's interpreter here
(small sizes); the same tests run compiled on a GPU."""
from __future__ import annotations

import pytest
import torch

from pagedserve.kernels import wna16
from pagedserve.kernels.utils import next_pow2
from pagedserve.kernels.wna16_gemv import FMA_MAX_M, fma_gemv_config, scale_mode, wna16_fma_gemv
from pagedserve.kernels.wna16_ref import wna16_linear_ref
from tests.kernels.conftest import HAS_CUDA
from tests.kernels.test_wna16 import _layer

DEV = "cuda" if HAS_CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if HAS_CUDA else [])

CASES = [  # (M, N, K, bits, group, zeros, act_order, bias, split_k, block_k) ; scale mode in the comment
    (1, 48, 256, 4, 128, False, False, False, 1, 128),   # 0: one group per tile, symmetric
    (3, 40, 256, 4, 128, True, False, True, 2, 64),      # 0 with zeros, bias through the split-K reduce
    (1, 40, 192, 4, 32, True, False, True, 1, 64),       # 1: groups smaller than the tile, ragged K
    (3, 24, 320, 4, 32, False, False, False, 3, 128),    # 1, split-K over a ragged K
    (4, 32, 256, 8, 64, True, False, False, 2, 64),      # 0, 8 bits
    (2, 32, 128, 8, 32, False, False, True, 1, 64),      # 1, 8 bits
    (1, 32, 256, 8, 64, True, True, False, 2, 64),       # 2: act-order g_idx, 8 bits
    (3, 24, 128, 4, 128, True, True, True, 1, 64),       # 2: act-order g_idx, 4 bits
    (4, 32, 96, 4, 96, False, False, True, 1, 64),       # per channel, K not a power of two
    (2, 24, 96, 8, 6, True, False, False, 2, 32),        # 2 without g_idx: groups of 6 split words of 4
]


def _args(N, K, bits, group, zeros, act, dtype, seed=0):
    qw, s, z, gi = _layer(N, K, bits, group, zeros, act, seed=seed)
    to = lambda t: t.to(DEV) if t is not None else None  # noqa: E731
    return to(qw), to(s).to(dtype), to(z).to(dtype) if z is not None else None, to(gi)


@pytest.mark.parametrize("M,N,K,bits,group,zeros,act,bias,split,block_k", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prefetch", [False, True])
def test_fma_gemv_matches_reference(M, N, K, bits, group, zeros, act, bias, split, block_k, dtype, prefetch):
    qw, s, z, gi = _args(N, K, bits, group, zeros, act, dtype)
    x = torch.randn(M, K, device=DEV).to(dtype)
    b = torch.randn(N, device=DEV).to(dtype) if bias else None
    ref = wna16_linear_ref(x.float(), qw, s.float(), z.float() if z is not None else None, gi, None, bits, group,
                           b.float() if bias else None)
    got = wna16_fma_gemv(x, qw, s, z, gi, bits, group, b, block_n=16, block_k=block_k, split_k=split,
                         prefetch=prefetch)
    assert got.dtype == dtype and got.shape == (M, N)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), ref, rtol=tol, atol=tol * max(1.0, ref.abs().max().item()))


def test_scale_modes_and_config():
    assert scale_mode(128, 128, 4, False) == 0 and scale_mode(128, 256, 4, False) == 1
    assert scale_mode(128, 128, 4, True) == 2 and scale_mode(6, 64, 8, False) == 2  # a word spans two groups
    for m in range(1, FMA_MAX_M + 1):
        for bits in (4, 8):
            cfg = fma_gemv_config(m, 4096, 4096, 128, "cpu", False, bits)
            bn, bk, split = cfg["block_n"], cfg["block_k"], cfg["split_k"]
            assert 128 % bk == 0 and bn >= 16 and split >= 1 and 4096 // (bk * split) >= 2
            # the tile of the GPU search (run 37): 64 x 128, 2 warps for one row, 4 above
            assert (bn, bk, cfg["num_warps"]) == (64, 128, 2 if m == 1 else 4)
            qw, s, _, _ = _args(bn * 2 + 8, 512, bits, 128, False, False, torch.float32)
            x = torch.randn(m, 512, device=DEV)  # the configuration runs
            torch.testing.assert_close(wna16_fma_gemv(x, qw, s, None, None, bits, 128, **cfg),
                                       wna16_linear_ref(x, qw, s, None, None, None, bits, 128), rtol=1e-4, atol=1e-4)


def test_strided_rows_and_empty_input():
    qw, s, z, _ = _args(32, 128, 4, 64, True, False, torch.float32)
    xx = torch.randn(3, 256, device=DEV)
    x = xx[:, :128]  # a row stride other than K
    torch.testing.assert_close(wna16_fma_gemv(x, qw, s, z, None, 4, 64, block_n=16, block_k=64),
                               wna16_linear_ref(x, qw, s, z, None, None, 4, 64), rtol=1e-4, atol=1e-4)
    assert wna16_fma_gemv(x[:0], qw, s, z, None, 4, 64).shape == (0, 32)
    with pytest.raises(AssertionError, match="at most"):
        wna16_fma_gemv(torch.randn(FMA_MAX_M + 1, 128, device=DEV), qw, s, z, None, 4, 64)


def test_linear_dispatches_small_batches_to_the_fma_gemv(monkeypatch):
    """M <= FMA_MAX_M runs the dot-free kernel (the tile kernel is not called), 4 < M <= 64 the skinny one."""
    qw, s, z, _ = _args(32, 128, 4, 64, True, False, torch.float32)
    calls = []
    skinny = wna16.wna16_gemv
    monkeypatch.setattr(wna16, "wna16_gemv", lambda *a, **k: calls.append(a[0].shape[0]) or skinny(*a, **k))
    for m in (1, FMA_MAX_M, FMA_MAX_M + 1):
        x = torch.randn(m, 128, device=DEV)
        torch.testing.assert_close(wna16.wna16_linear(x, qw, s, z, None, 4, 64),
                                   wna16_linear_ref(x, qw, s, z, None, None, 4, 64), rtol=1e-4, atol=1e-4)
    assert calls == [FMA_MAX_M + 1]
