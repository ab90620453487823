"""RMSNorm (+ residual), rotary embedding and SiLU-and-mul kernels against the layer references."""
from __future__ import annotations

import pytest
import torch

from pagedserve.kernels.activation import silu_and_mul
from pagedserve.kernels.rmsnorm import rms_norm_fused
from pagedserve.kernels.rotary import rotary_fused
from pagedserve.layers.activation import SiluAndMul, silu_and_mul_ref
from pagedserve.layers.norm import RMSNorm, rms_norm_ref
from pagedserve.layers.rotary import RotaryEmbedding, apply_rotary_ref
from tests.kernels.paged_utils import DEVICE, DTYPES, assert_close, randn

# these are elementwise: beyond the attention tolerances, allow one ulp of the dtype at |x| ~ 4
ULP_TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3.2e-2}


def _close(out, ref, dtype, what):
    assert out.dtype == ref.dtype and out.shape == ref.shape, (out.dtype, ref.dtype, out.shape, ref.shape)
    assert not torch.isnan(out).any(), what
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= ULP_TOL[dtype], f"{what}: max abs err {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [64, 96, 576])
def test_rms_norm(dtype, hidden):
    gen = torch.Generator().manual_seed(hidden)
    x = randn(5, hidden, dtype=dtype, gen=gen)
    w = randn(hidden, dtype=dtype, gen=gen, scale=0.5) + 1
    out = rms_norm_fused(x, None, w, 1e-5)
    _close(out, rms_norm_ref(x, w, 1e-5), dtype, "rmsnorm")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_add_rms_norm(dtype):
    gen = torch.Generator().manual_seed(1)
    x = randn(2, 3, 128, dtype=dtype, gen=gen)
    res = randn(2, 3, 128, dtype=dtype, gen=gen, scale=4)
    w = randn(128, dtype=dtype, gen=gen, scale=0.5) + 1
    x0, r0 = x.clone(), res.clone()
    out, new_res = rms_norm_fused(x, res, w, 1e-6)
    ref_res = x + res
    assert torch.equal(new_res, ref_res)  # same single rounding as torch
    _close(out, rms_norm_ref(ref_res, w, 1e-6), dtype, "fused add rmsnorm")
    assert torch.equal(x, x0) and torch.equal(res, r0)  # inputs untouched


def test_rms_norm_strided_input_and_fp32_weight():
    """q_norm-like input (a non-contiguous [T, H, D] view); fp32 weight promotes the output."""
    gen = torch.Generator().manual_seed(2)
    buf = randn(4, 6, 32, dtype=torch.float16, gen=gen)
    x = buf[:, 1:4]
    w = randn(32, dtype=torch.float32, gen=gen) + 1
    out = rms_norm_fused(x, None, w, 1e-6)
    _close(out, rms_norm_ref(x, w, 1e-6), torch.float32, "strided rmsnorm")


def test_rms_norm_module_hook():
    gen = torch.Generator().manual_seed(3)
    norm = RMSNorm(64, 1e-5).to(DEVICE)
    x, r = randn(3, 64, dtype=torch.float32, gen=gen), randn(3, 64, dtype=torch.float32, gen=gen)
    ref_out, ref_res = norm(x, r)
    norm.fused = rms_norm_fused
    out, res = norm(x, r)
    _close(out, ref_out, torch.float32, "hook")
    assert torch.equal(res, ref_res)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (4, 1, 128), (2, 2, 48)])
def test_rotary(dtype, heads, kv_heads, head_dim):
    gen = torch.Generator().manual_seed(heads)
    T = 6
    rope = RotaryEmbedding(head_dim, 4096, 500000.0,
                           {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 1024}
                           ).to(DEVICE)
    # q/k as strided views of one qkv buffer
    qkv = randn(T, heads + 2 * kv_heads, head_dim, dtype=dtype, gen=gen)
    q, k = qkv[:, :heads], qkv[:, heads:heads + kv_heads]
    v_before = qkv[:, heads + kv_heads:].clone()
    positions = torch.tensor([0, 1, 17, 1000, 4095, 3], device=DEVICE)
    cos, sin = rope.cos_cache[positions], rope.sin_cache[positions]
    ref_q, ref_k = apply_rotary_ref(q, cos, sin), apply_rotary_ref(k, cos, sin)
    q2, k2 = rotary_fused(positions, q, k, rope.cos_cache, rope.sin_cache)
    assert q2.data_ptr() == q.data_ptr() and k2.data_ptr() == k.data_ptr()  # in place
    _close(q2, ref_q, dtype, "rotary q")
    _close(k2, ref_k, dtype, "rotary k")
    assert torch.equal(qkv[:, heads + kv_heads:], v_before)  # v untouched


@pytest.mark.parametrize("scaling", [
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256},
    {"rope_type": "longrope", "original_max_position_embeddings": 100,
     "short_factor": [1.0 + 0.1 * i for i in range(32)], "long_factor": [1.0 + 2.0 * i for i in range(32)]},
    {"rope_type": "dynamic", "factor": 2.0},
], ids=lambda s: s["rope_type"])
def test_rotary_scaled_caches(scaling):
    """The fused kernel over the yarn / longrope / dynamic caches (attention factor folded into
    cos/sin; longrope's short rows then long rows) equals the reference."""
    gen = torch.Generator().manual_seed(5)
    rope = RotaryEmbedding(64, 512, 10000.0, scaling, 256).to(DEVICE)
    q, k = randn(5, 4, 64, dtype=torch.float16, gen=gen), randn(5, 2, 64, dtype=torch.float16, gen=gen)
    pos = torch.tensor([0, 99, 100, 300, 511], device=DEVICE)
    cos, sin = rope.cos_cache[pos], rope.sin_cache[pos]
    ref_q, ref_k = apply_rotary_ref(q, cos, sin), apply_rotary_ref(k, cos, sin)
    q2, k2 = rotary_fused(pos, q.clone(), k.clone(), rope.cos_cache, rope.sin_cache)
    _close(q2, ref_q, torch.float16, "rotary q")
    _close(k2, ref_k, torch.float16, "rotary k")


def test_rotary_partial_dims_in_place():
    """Partial RoPE (Phi-4-mini: 3/4 of each head): the fused kernel on the first-dims views of the
    strided q/k equals the reference; the other dims stay as they were."""
    gen = torch.Generator().manual_seed(6)
    rope = RotaryEmbedding(64, 256, 10000.0, rotary_dim=48).to(DEVICE)
    qkv = randn(4, 6 + 2 * 2, 64, dtype=torch.float16, gen=gen)
    q, k = qkv[:, :6], qkv[:, 6:8]
    pos = torch.tensor([0, 5, 100, 255], device=DEVICE)
    ref_q, ref_k = rope(pos, q.clone(), k.clone())
    rope.fused = rotary_fused
    out_q, out_k = rope(pos, q, k)
    assert out_q.data_ptr() == q.data_ptr()
    _close(out_q, ref_q, torch.float16, "partial rotary q")
    _close(out_k, ref_k, torch.float16, "partial rotary k")


def test_rotary_module_hook():
    gen = torch.Generator().manual_seed(4)
    rope = RotaryEmbedding(64, 128, 10000.0).to(DEVICE)
    q, k = randn(3, 4, 64, dtype=torch.float32, gen=gen), randn(3, 2, 64, dtype=torch.float32, gen=gen)
    pos = torch.tensor([5, 6, 127], device=DEVICE)
    ref_q, ref_k = rope(pos, q, k)
    rope.fused = rotary_fused
    out_q, out_k = rope(pos, q.clone(), k.clone())
    _close(out_q, ref_q, torch.float32, "q")
    _close(out_k, ref_k, torch.float32, "k")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("inter", [64, 1536, 100])
def test_silu_and_mul(dtype, inter):
    gen = torch.Generator().manual_seed(inter)
    x = randn(3, 2 * inter, dtype=dtype, gen=gen, scale=3)
    out = silu_and_mul(x)
    _close(out, silu_and_mul_ref(x), dtype, "silu_and_mul")


def test_silu_and_mul_module_hook_3d():
    gen = torch.Generator().manual_seed(5)
    act = SiluAndMul()
    x = randn(2, 3, 64, dtype=torch.float16, gen=gen)
    ref = act(x)
    act.fused = silu_and_mul
    out = act(x)
    assert out.shape == (2, 3, 32)
    _close(out, ref, torch.float16, "hook")
    assert_close(out, ref, torch.float16)
