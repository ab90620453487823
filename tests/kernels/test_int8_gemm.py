"""INT8 W8A8 kernels against their torch references (Triton's interpreter on CPU, compiled on a
GPU): per-token / static int8 quantization bit for bit, the scaled int8 GEMM (exact int32
accumulation, so equal to the reference up to the fp32 epilogue's rounding) at decode and prefill
shapes, ragged K and N, with and without bias."""
from __future__ import annotations

import pytest
import torch

from pagedserve.kernels.int8_gemm import gemm_config, int8_gemm, quantize_int8
from pagedserve.kernels.int8_utils import int8_gemm_ref, quantize_int8_ref
from tests.kernels.paged_utils import DEVICE


@pytest.mark.parametrize("m,k", [(1, 64), (5, 96), (3, 3000)])
@pytest.mark.parametrize("static", [False, True])
def test_quantize_int8_matches_reference(m, k, static):
    g = torch.Generator().manual_seed(m + k)
    x = torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 4
    x[0, :3] = torch.tensor([0.5, 1.5, -2.5]) * (x[0].abs().max() / 127)  # ties: round half to even
    x[-1] *= 0 if m > 1 else 1  # an all-zero row keeps a finite scale
    s_in = torch.tensor([0.02]) if static else None  # saturates the large entries
    q, s = quantize_int8(x.to(DEVICE), s_in.to(DEVICE) if static else None)
    rq, rs = quantize_int8_ref(x, s_in)
    assert q.dtype == torch.int8 and s.shape == (m, 1)
    torch.testing.assert_close(s.cpu(), rs)
    assert torch.equal(q.cpu(), rq)
    assert rq.min() >= -128 and rq.max() <= 127


@pytest.mark.parametrize("m,n,k", [(1, 48, 64), (7, 100, 80), (16, 64, 128), (33, 24, 96), (64, 40, 256),
                                   (130, 72, 160)])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_gemm_matches_reference(m, n, k, bias):
    g = torch.Generator().manual_seed(m * 31 + n + k)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    a_s, b_s = torch.rand(m, generator=g) * 1e-2, torch.rand(n, generator=g) * 1e-2
    bb = torch.randn(n, generator=g) if bias else None
    ref = int8_gemm_ref(a, b, a_s, b_s, bb)
    small = (min(32, max(16, m)), 32, 64, 4, 2) if m > 64 else None  # 128-row tiles are slow interpreted
    out = int8_gemm(a.to(DEVICE), b.to(DEVICE), a_s.to(DEVICE), b_s.to(DEVICE),
                    bb.to(DEVICE) if bias else None, out_dtype=torch.float32, config=small).cpu()
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_int8_gemm_writes_half_precision_and_handles_empty_inputs():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (3, 64), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (32, 64), generator=g, dtype=torch.int8)
    a_s, b_s = torch.full((3, 1), 1e-3), torch.full((32,), 1e-3)
    out = int8_gemm(a.to(DEVICE), b.to(DEVICE), a_s.to(DEVICE), b_s.to(DEVICE), out_dtype=torch.float16).cpu()
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), int8_gemm_ref(a, b, a_s, b_s), rtol=1e-3, atol=1e-3)
    empty = int8_gemm(a[:0].to(DEVICE), b.to(DEVICE), a_s[:0].to(DEVICE), b_s.to(DEVICE))
    assert empty.shape == (0, 32)


def test_gemm_config_tiles():
    assert gemm_config(1, 4096, 4096)[:2] == (16, 32)
    assert gemm_config(64, 28672, 4096)[:2] == (64, 64)
    assert gemm_config(512, 4096, 4096)[:3] == (128, 128, 128)
