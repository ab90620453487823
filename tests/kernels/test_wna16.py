"""The W4A16 / W8A16 dequantising kernels (``kernels/wna16.py``) against the torch reference
(``kernels/wna16_ref.py``): 4 and 8 bits, symmetric and with zeros, groups inside one K tile,
straddling tiles and per channel, act-order ``g_idx``, bias, split-K, ragged M / N / K. In Triton's
interpreter here (small sizes); the same tests run compiled on a GPU, bf16 included."""
from __future__ import annotations

import pytest
import torch

from pagedserve.kernels import wna16
from pagedserve.kernels.wna16 import wna16_dequantize, wna16_gemm, wna16_gemv, wna16_linear
from pagedserve.kernels.wna16_ref import dequantize, pack_rows, unpack_rows, wna16_linear_ref
from tests.kernels.conftest import HAS_CUDA

DEV = "cuda" if HAS_CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if HAS_CUDA else [])


def _layer(n: int, k: int, bits: int, group: int, zeros: bool, act_order: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 1 << bits, (n, k), generator=g, dtype=torch.int32)
    groups = k // group
    scales = torch.rand(groups, n, generator=g) * 0.02 + 0.001
    z = torch.randint(0, 1 << bits, (groups, n), generator=g).float() if zeros else None
    g_idx = None
    if act_order:  # sorted, uneven groups (a row-parallel act-order shard)
        g_idx = torch.sort(torch.randint(0, groups, (k,), generator=g)).values.to(torch.int32)
    return pack_rows(q, bits), scales, z, g_idx


def test_pack_roundtrip():
    for bits in (4, 8):
        q = torch.randint(0, 1 << bits, (5, 64), dtype=torch.int32)
        p = pack_rows(q, bits)
        assert p.dtype == torch.int32 and p.shape == (5, 64 * bits // 32)
        assert torch.equal(unpack_rows(p, bits), q)
    # nibble order: value i of a word in bits 4i..4i+3
    assert pack_rows(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15]]), 4).item() == int("f7654321", 16) - (1 << 32)


CASES = [  # (M, N, K, bits, group, zeros, act_order, bias, split_k)
    (1, 48, 128, 4, 128, False, False, False, 1),
    (3, 40, 256, 4, 64, True, False, True, 1),     # groups smaller than the K tile
    (5, 64, 192, 4, 32, True, False, False, 2),    # ragged K, split-K
    (16, 32, 128, 8, 128, False, False, True, 1),
    (7, 32, 256, 8, 64, True, True, False, 2),     # act-order g_idx, 8 bits
    (2, 24, 128, 4, 128, True, True, True, 1),     # act-order g_idx, 4 bits
    (4, 32, 96, 4, 96, False, False, False, 1),    # per channel, K not a power of two
]


@pytest.mark.parametrize("M,N,K,bits,group,zeros,act,bias,split", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split_dots", [False, True])
def test_gemv_matches_reference(M, N, K, bits, group, zeros, act, bias, split, dtype, split_dots):
    qw, s, z, gi = _layer(N, K, bits, group, zeros, act)
    x = torch.randn(M, K)
    b = torch.randn(N) if bias else None
    to = lambda t: t.to(DEV) if t is not None else None  # noqa: E731
    args = (to(qw), to(s).to(dtype), to(z).to(dtype) if z is not None else None, to(gi), bits, group)
    ref = wna16_linear_ref(x.to(DEV).to(dtype).float(), args[0], args[1].float(),
                           args[2].float() if z is not None else None, args[3], None, bits, group,
                           to(b).float() if bias else None)
    block_k = 16 * 32 // bits if split_dots else 64
    got = wna16_gemv(to(x).to(dtype), *args, to(b).to(dtype) if bias else None, block_n=16, block_k=block_k,
                     split_k=split, split_dots=split_dots)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), ref, rtol=tol, atol=tol * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("M,N,K,bits,group,zeros,act,bias,split", CASES[:5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_matches_reference(M, N, K, bits, group, zeros, act, bias, split, dtype):
    M = M * 13 + 3  # prefill sizes, ragged
    qw, s, z, gi = _layer(N, K, bits, group, zeros, act, seed=1)
    x = torch.randn(M, K)
    b = torch.randn(N) if bias else None
    to = lambda t: t.to(DEV) if t is not None else None  # noqa: E731
    args = (to(qw), to(s).to(dtype), to(z).to(dtype) if z is not None else None, to(gi), bits, group)
    ref = wna16_linear_ref(x.to(DEV).to(dtype).float(), args[0], args[1].float(),
                           args[2].float() if z is not None else None, args[3], None, bits, group,
                           to(b).float() if bias else None)
    got = wna16_gemm(to(x).to(dtype), *args, to(b).to(dtype) if bias else None, block_m=32, block_n=16, block_k=32)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), ref, rtol=tol, atol=tol * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("M,N,K,bits,group,zeros,act,bias,split", CASES)
def test_dequantize_matches_reference(M, N, K, bits, group, zeros, act, bias, split):
    qw, s, z, gi = _layer(N, K, bits, group, zeros, act, seed=2)
    to = lambda t: t.to(DEV) if t is not None else None  # noqa: E731
    for dtype in DTYPES:
        got = wna16_dequantize(to(qw), to(s).to(dtype), to(z), to(gi), bits, group, dtype)
        ref = dequantize(to(qw), to(s).to(dtype), to(z), to(gi), bits, group, dtype)
        assert got.dtype == dtype and got.shape == (N, K)
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_dispatch_and_empty_input(monkeypatch):
    monkeypatch.setattr(wna16, "DENSE_MIN_M", 100)  # 70: tiled kernel, 130: dequantize + matmul
    qw, s, z, _ = _layer(32, 128, 4, 64, True, False)
    qw, s, z = qw.to(DEV), s.to(DEV), z.to(DEV)
    for m in (0, 2, 70, 130):
        x = torch.randn(m, 128, device=DEV)
        got = wna16_linear(x, qw, s, z, None, 4, 64)
        assert got.shape == (m, 32)
        torch.testing.assert_close(got, wna16_linear_ref(x, qw, s, z, None, None, 4, 64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("uneven", [False, True])
def test_act_order_repack_then_kernels_equal_the_dense_layer(uneven):
    """``layers/quantization/wna16.repack`` of an act-order layer (features sorted by group: uniform
    groups, or uneven ones as on a row-parallel rank) run through the kernels with the activation
    permutation equals the dequantized weight in feature order."""
    from torch import nn

    from pagedserve.layers.quantization.wna16 import Unpacked, dense_weight, repack

    g = torch.Generator().manual_seed(3)
    n, k, group, bits = 48, 256, 32, 4
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32)
    groups = k // group if not uneven else 2 * k // group  # uneven: this rank holds half of the features
    g_idx = torch.randperm(k, generator=g) % (k // group) if not uneven else torch.randint(0, groups, (k,), generator=g)
    u = Unpacked(q.to(DEV), (torch.rand(groups, n, generator=g) * 0.02).half().to(DEV),
                 torch.randint(0, 16, (groups, n), generator=g).float().to(DEV), g_idx.to(torch.int32).to(DEV), group)
    layer = nn.Module()
    repack(layer, u, bits)
    assert layer.wq_perm is not None and (layer.wq_g_idx is not None) == uneven
    for m in (5, 70):  # skinny and tiled kernels
        xm = torch.randn(m, k, device=DEV)
        got = wna16_linear(xm.index_select(1, layer.wq_perm), layer.wq_packed, layer.wq_scales, layer.wq_zeros,
                           layer.wq_g_idx, bits, group)
        torch.testing.assert_close(got, xm @ dense_weight(layer, torch.float32).t(), rtol=1e-4, atol=1e-4)
    # the dense weight is the unpacked integers dequantized in feature order
    gi = g_idx.long()
    ref = (q.float() - u.zeros.cpu()[gi].t()) * u.scales.cpu().float()[gi].t()
    torch.testing.assert_close(dense_weight(layer, torch.float32).cpu(), ref)
