"""fp8 quantization fused into RMSNorm and SiLU-and-mul (``--quantization fp8``): each fused
kernel writes what ``quantize_per_token_ref`` makes of the unfused output, and a decoder layer
with the fusions installed computes what it computed without them."""
from __future__ import annotations

import pytest
import torch

from pagedserve.kernels import activation as act_kernels
from pagedserve.kernels.activation import silu_and_mul
from pagedserve.kernels.rmsnorm import rms_norm_fused
from pagedserve.layers.activation import silu_and_mul_ref
from pagedserve.kernels.quant_fp8 import quantize_per_token
from pagedserve.layers import fp8
from pagedserve.kernels.fp8_utils import Fp8Act, quantize_per_token_ref
from pagedserve.layers.linear import quantize_model_fp8
from pagedserve.layers.norm import rms_norm_ref
from pagedserve.arch_config import ArchConfig
from pagedserve.models.llama import LlamaDecoderLayer
from pagedserve.layers.rotary import RotaryEmbedding
from pagedserve.worker.fusion import install_fused_kernels
from tests.kernels.conftest import INTERPRETED
from tests.kernels.paged_utils import DEVICE, assert_fp8_matches, randn

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def _check(act: Fp8Act, ref: torch.Tensor) -> None:
    rq, rs = quantize_per_token_ref(ref.reshape(-1, ref.shape[-1]))
    assert isinstance(act, Fp8Act) and act.dtype == ref.dtype
    assert act.q.dtype == torch.float8_e4m3fn and act.q.shape == rq.shape and act.scale.shape == rs.shape
    torch.testing.assert_close(act.scale.cpu(), rs.cpu(), rtol=1e-6, atol=0)
    assert_fp8_matches(act.q, rq, INTERPRETED)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [64, 576])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_quant(dtype, hidden, with_residual):
    gen = torch.Generator().manual_seed(hidden + with_residual)
    x = randn(5, hidden, dtype=dtype, gen=gen, scale=3)
    w = randn(hidden, dtype=dtype, gen=gen, scale=0.5) + 1
    x[1] = 0  # an all-zero row (without residual): the floor scale
    if with_residual:
        res = randn(5, hidden, dtype=dtype, gen=gen)
        act, new_res = rms_norm_fused(x, res, w, 1e-6, quant=True)
        assert torch.equal(new_res, x + res)
        _check(act, rms_norm_ref(x + res, w, 1e-6))
    else:
        _check(rms_norm_fused(x, None, w, 1e-6, quant=True), rms_norm_ref(x, w, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("inter", [64, 100, 1536])
def test_silu_and_mul_quant(dtype, inter):
    gen = torch.Generator().manual_seed(inter)
    x = randn(3, 2 * inter, dtype=dtype, gen=gen, scale=3)
    _check(silu_and_mul(x, quant=True), silu_and_mul_ref(x))


def test_silu_and_mul_quant_too_wide_for_one_program(monkeypatch):
    """Rows wider than QUANT_MAX_BLOCK take SiLU-and-mul, then the quantization kernel: same result."""
    monkeypatch.setattr(act_kernels, "QUANT_MAX_BLOCK", 64)
    gen = torch.Generator().manual_seed(7)
    x = randn(2, 2 * 100, dtype=torch.float16, gen=gen, scale=3)
    _check(silu_and_mul(x, quant=True), silu_and_mul_ref(x))


def _cfg() -> ArchConfig:
    return ArchConfig(architecture="LlamaForCausalLM", vocab_size=64, hidden_size=128, intermediate_size=256,
                      num_layers=1, num_heads=4, num_kv_heads=2, head_dim=32, rms_norm_eps=1e-6,
                      rope_theta=10000.0, rope_scaling=None, max_position_embeddings=256,
                      tie_word_embeddings=False)


def _layer(dtype: torch.dtype) -> LlamaDecoderLayer:
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(_cfg(), 0, RotaryEmbedding(32, 256, 10000.0))
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.1)
        layer.input_layernorm.weight.add_(1)
        layer.post_attention_layernorm.weight.add_(1)
    layer = layer.to(device=DEVICE, dtype=dtype)
    layer.self_attn.rotary = layer.self_attn.rotary.to(DEVICE)
    assert quantize_model_fp8(layer) == 4
    return layer


def test_decoder_layer_with_fused_quantization_computes_the_same(monkeypatch):
    # the unfused layers quantize with the kernel too (the torch reference on CPU otherwise), so
    # that the interpreter's fp8 rounding (assert_fp8_matches) is the same on both sides
    calls = []
    monkeypatch.setattr(fp8, "quantize_activation", lambda x: calls.append(x.shape) or quantize_per_token(x))
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float16
    layer = _layer(dtype)
    gen = torch.Generator().manual_seed(1)
    x, residual = randn(6, 128, dtype=dtype, gen=gen), randn(6, 128, dtype=dtype, gen=gen)
    attn_out = randn(6, 128, dtype=dtype, gen=gen)
    positions = torch.arange(6, device=DEVICE)
    with torch.inference_mode():
        ref_pre = layer.pre_attention(positions, x, residual)
        ref_post = layer.post_attention(attn_out, residual)
        assert len(calls) == 4  # qkv, o, gate_up, down quantize their inputs
        install_fused_kernels(layer)
        flags = {n: m.quant_out for n, m in layer.named_modules() if hasattr(m, "quant_out")}
        assert flags == {"input_layernorm": True, "post_attention_layernorm": True, "mlp.act": True}, flags
        pre = layer.pre_attention(positions, x, residual)
        post = layer.post_attention(attn_out, residual)
        assert len(calls) == 5  # only o_proj's input (the attention output) still takes a launch
    # q, k, v and the residual; the MLP output and the residual
    for got, want, what in [*zip(pre, ref_pre, "qkvr"), *zip(post, ref_post, ("mlp", "residual"))]:
        assert got.shape == want.shape and got.dtype == want.dtype, what
        err = (got.float() - want.float()).norm() / want.float().norm()
        # the same arithmetic; the fused rotary may round one bf16 / fp16 ulp the other way
        assert err <= (4e-3 if dtype == torch.bfloat16 else 1e-3), (what, float(err))


def test_bf16_layers_are_not_marked():
    """Without fp8 weights nothing is quantized on the way."""
    layer = LlamaDecoderLayer(_cfg(), 0, RotaryEmbedding(32, 256, 10000.0))
    install_fused_kernels(layer)
    assert not any(getattr(m, "quant_out", False) for m in layer.modules())
