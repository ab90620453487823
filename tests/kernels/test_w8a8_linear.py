"""The 8-bit linear functions the W8A8 checkpoint layers call (``layers/fp8.fp8_linear`` with a
static input scale, ``layers/int8.int8_linear``) against the arithmetic spelled out, at decode
(skinny GEMV / small-M tiles) and prefill sizes. On a GPU this runs the Triton kernels and
``torch._scaled_mm``; on CPU the torch paths."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedserve.kernels.fp8_utils import FP8_DTYPE, FP8_MAX
from pagedserve.layers.fp8 import fp8_linear, quantize_weight
from pagedserve.layers.int8 import int8_linear, quantize_weight_int8
from tests.kernels.paged_utils import DEVICE

DT = torch.bfloat16 if DEVICE == "cuda" else torch.float32
TOL = dict(rtol=2e-2, atol=2e-2) if DT == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [1, 8, 80])
def test_fp8_linear_with_a_static_input_scale(m):
    g = torch.Generator().manual_seed(m)
    w = torch.randn(64, 128, generator=g) * 0.05
    x = (torch.randn(m, 128, generator=g) * 2).to(DT)
    b = torch.randn(64, generator=g).to(DT)
    wq, ws = quantize_weight(w)
    s_in = torch.tensor([3.0 / FP8_MAX])  # entries beyond ±3 saturate
    got = fp8_linear(x.to(DEVICE), wq.to(DEVICE), ws.to(DEVICE), b.to(DEVICE), input_scale=s_in.to(DEVICE)).cpu()
    xd = (x.float() / s_in).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float() * s_in
    ref = F.linear(xd, wq.float() * ws[:, None], b.float())
    assert got.dtype == DT and got.shape == (m, 64)
    torch.testing.assert_close(got.float(), ref, **TOL)


@pytest.mark.parametrize("m", [1, 8, 80])
@pytest.mark.parametrize("static", [False, True])
def test_int8_linear(m, static):
    g = torch.Generator().manual_seed(m + 100 * static)
    w = torch.randn(48, 96, generator=g) * 0.05
    x = (torch.randn(2, m, 96, generator=g) * 2).to(DT)
    wq, ws = quantize_weight_int8(w)
    assert wq.dtype == torch.int8 and ws.shape == (48,)
    s_in = torch.tensor([8.0 / 127]) if static else None  # 4 sigma: a few entries saturate
    got = int8_linear(x.to(DEVICE), wq.to(DEVICE), ws.to(DEVICE), None,
                      input_scale=s_in.to(DEVICE) if static else None).cpu()
    xf = x.float().reshape(-1, 96)
    s = s_in.expand(xf.shape[0], 1) if static else xf.abs().amax(1, keepdim=True) / 127
    ref = F.linear(torch.round(xf / s).clamp(-128, 127) * s, wq.float() * ws[:, None]).reshape(2, m, 48)
    assert got.dtype == DT and got.shape == (2, m, 48)
    torch.testing.assert_close(got.float(), ref, **TOL)
    # and close to the float product: int8 keeps ~7 bits per operand
    exact = F.linear(x.float(), w)
    assert (got.float() - exact).norm() / exact.norm() < (0.04 if static else 0.02)


@pytest.mark.parametrize("m,k", [(1, 64), (7, 300), (3, 5000)])
def test_static_fp8_quantization_kernel_matches_reference(m, k):
    """``kernels/quant_fp8.quantize_static`` (one launch) equals ``layers/fp8.quantize_static_ref``,
    entries beyond ±448·scale saturating."""
    from pagedserve.kernels.quant_fp8 import quantize_static
    from pagedserve.layers.fp8 import quantize_static_ref
    from tests.kernels.conftest import INTERPRETED
    from tests.kernels.paged_utils import assert_fp8_matches

    g = torch.Generator().manual_seed(m + k)
    x = torch.randn(m, k, generator=g) * 3
    s_in = torch.tensor([6.0 / FP8_MAX])
    q, s = (t.cpu() for t in quantize_static(x.to(DEVICE), s_in.to(DEVICE)))
    rq, rs = quantize_static_ref(x, s_in)
    assert q.dtype == FP8_DTYPE and torch.equal(s, rs) and s.shape == (m, 1)
    assert_fp8_matches(q, rq, INTERPRETED)
    assert float(rq.float().abs().max()) == FP8_MAX  # |x| > 6 saturates
