"""Per-token fp8 activation quantization: the Triton kernel equals the torch reference."""
from __future__ import annotations

import pytest
import torch

from pagedserve.kernels.quant_fp8 import quantize_per_token
from pagedserve.kernels.fp8_utils import FP8_MAX, MIN_SCALE, quantize_per_token_ref
from tests.kernels.conftest import INTERPRETED
from tests.kernels.paged_utils import DEVICE, assert_fp8_matches


@pytest.mark.parametrize("m,k", [(1, 64), (7, 300), (33, 4096), (3, 5000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_quant_matches_reference(m, k, dtype):
    g = torch.Generator().manual_seed(m * 100 + k)
    x = (torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 10).to(dtype)
    x[0, 0] = 0.0
    q, s = (t.cpu() for t in quantize_per_token(x.to(DEVICE)))
    rq, rs = quantize_per_token_ref(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (m, 1)
    torch.testing.assert_close(s, rs, rtol=1e-6, atol=0)
    assert_fp8_matches(q, rq, INTERPRETED)
    a, b = q.float(), rq.float()
    # the reference itself: |x - q * s| within half an e4m3 step: 2^-4 of |x|, or half the
    # subnormal step (2^-10 of the scale) for the smallest values
    err = (b * rs - x.float()).abs()
    assert bool((err <= torch.maximum(x.float().abs() * 2 ** -4, rs * 2 ** -10) * (1 + 1e-5)).all())
    assert float(a.abs().max()) <= FP8_MAX


def test_zero_row_gets_the_floor_scale():
    q, s = (t.cpu() for t in quantize_per_token(torch.zeros(2, 64, device=DEVICE)))
    assert torch.all(s == MIN_SCALE) and torch.all(q.float() == 0)
