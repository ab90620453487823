"""The skinny decode GEMV kernel equals F.linear on random inputs (interpreter on CPU)."""
from __future__ import annotations

import pytest
import torch

from pagedserve.kernels.gemv import gemv, linear_ref


@pytest.mark.parametrize("m,n,k", [(1, 48, 64), (3, 33, 96), (16, 64, 128), (7, 100, 80), (17, 40, 64), (33, 24, 96),
                                   (64, 32, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_linear(m, n, k, dtype, bias):
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) * 0.1).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    out = gemv(x, w, b, block_k=32)
    ref = linear_ref(x.float(), w.float(), b.float() if b is not None else None)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert torch.allclose(out.float(), ref, atol=tol, rtol=tol), (out.float() - ref).abs().max()
