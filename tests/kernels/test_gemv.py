"""The skinny decode GEMV kernel equals F.linear on random inputs (interpreter on CPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedserve.kernels.gemv import gemv, linear_ref
from tests.kernels.paged_utils import DEVICE


@pytest.mark.parametrize("m,n,k", [(1, 48, 64), (3, 33, 96), (16, 64, 128), (7, 100, 80), (17, 40, 64), (33, 24, 96),
                                   (64, 32, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_linear(m, n, k, dtype, bias):
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) * 0.1).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    out = gemv(x.to(DEVICE), w.to(DEVICE), b.to(DEVICE) if b is not None else None, block_k=32).cpu()
    ref = linear_ref(x.float(), w.float(), b.float() if b is not None else None)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert torch.allclose(out.float(), ref, atol=tol, rtol=tol), (out.float() - ref).abs().max()


@pytest.mark.parametrize("m,n,k", [(1, 48, 64), (5, 40, 96), (33, 24, 128), (64, 32, 64)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
def test_gemv_fp8_matches_dequantized_linear(m, n, k, out_dtype):
    """fp8 activations (per-row scale) x fp8 weights (per-output-channel scale)."""
    from pagedserve.kernels.fp8_utils import quantize_per_token_ref

    g = torch.Generator().manual_seed(m * 7 + n + k)
    xq, xs = quantize_per_token_ref(torch.randn(m, k, generator=g))
    wq, ws = quantize_per_token_ref(torch.randn(n, k, generator=g) * 0.1)
    b = torch.randn(n, generator=g).to(out_dtype)
    out = gemv(xq.to(DEVICE), wq.to(DEVICE), b.to(DEVICE), x_scale=xs.view(-1).to(DEVICE),
               w_scale=ws.view(-1).to(DEVICE), out_dtype=out_dtype, block_k=32, block_n=16).cpu()
    ref = F.linear(xq.float() * xs, wq.float() * ws, b.float())
    tol = 1e-4 if out_dtype == torch.float32 else 2e-2
    assert out.dtype == out_dtype
    assert torch.allclose(out.float(), ref, atol=tol, rtol=tol), (out.float() - ref).abs().max()
    got = linear_ref(xq, wq, b, x_scale=xs.view(-1), w_scale=ws.view(-1), out_dtype=out_dtype).float()
    assert torch.allclose(got, ref, atol=tol, rtol=tol)


def test_gemv_fp8_needs_scales():
    from pagedserve.kernels.fp8_utils import quantize_per_token_ref

    wq, ws = quantize_per_token_ref(torch.randn(16, 32))
    with pytest.raises(AssertionError, match="x_scale"):
        gemv(wq[:2], wq, w_scale=ws.view(-1))
    with pytest.raises(AssertionError, match="dtypes differ"):
        gemv(torch.randn(2, 32), wq)
