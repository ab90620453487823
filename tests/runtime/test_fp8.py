"""``--quantization fp8``: weight quantization error bounds, the fp8 linear layer against the
dequantized reference, the real SmolLM2 weights served in fp8 (the France answer, prompt
log-probabilities close to the unquantized model's; the same with an fp8 KV cache), and the
configuration checks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedserve import LLM, EngineArgs, SamplingParams
from pagedserve.layers.fp8 import check_fp8_device, fp8_linear, quantize_weight
from pagedserve.layers.linear import ColumnParallelLinear, RowParallelLinear

TEXT = ("The quick brown fox jumps over the lazy dog. Paris is the capital and most populous city of France, "
        "with an estimated population of two million residents.")


def test_weight_quantization_error_is_within_half_an_fp8_step():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g) * torch.rand(64, 1, generator=g)
    q, s = quantize_weight(w)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (64,)
    deq = q.float() * s[:, None]
    bound = torch.maximum(w.abs() * 2 ** -4, s[:, None] * 2 ** -10) * (1 + 1e-5)
    assert bool(((deq - w).abs() <= bound).all())
    assert torch.allclose(s, w.abs().amax(dim=1) / 448)


@pytest.mark.parametrize("cls", [ColumnParallelLinear, RowParallelLinear])
def test_fp8_layer_equals_the_dequantized_reference(cls):
    torch.manual_seed(1)
    layer = cls(96, 48, bias=True) if cls is ColumnParallelLinear else cls(96, 48)
    layer.weight.data.normal_(0, 0.05)
    if layer.bias is not None:
        layer.bias.data.normal_()
    x = torch.randn(2, 5, 96)
    exact = layer(x)
    layer.quantize_fp8()
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.shape == (48,)
    got = layer(x)
    assert got.shape == (2, 5, 48) and got.dtype == x.dtype
    # the same arithmetic spelled out: per-token activation scales, per-channel weight scales
    xq, xs = quantize_weight(x.reshape(10, 96))
    ref = F.linear(xq.float() * xs[:, None], layer.weight.float() * layer.weight_scale[:, None], layer.bias)
    torch.testing.assert_close(got.reshape(10, 48), ref, rtol=1e-5, atol=1e-5)
    # and close to the unquantized layer: fp8 keeps ~3 mantissa bits
    assert (got - exact).norm() / exact.norm() < 0.06


def test_fp8_linear_keeps_shapes_for_empty_and_strided_inputs():
    q, s = quantize_weight(torch.randn(32, 64))
    assert fp8_linear(torch.randn(0, 64), q, s, None).shape == (0, 32)
    x = torch.randn(4, 128)[:, ::2]  # last stride 2
    torch.testing.assert_close(fp8_linear(x, q, s, None), fp8_linear(x.contiguous(), q, s, None))


@pytest.fixture(scope="module")
def smollm2_prompt_logprobs():
    out = {}
    for q in (None, "fp8"):
        llm = LLM(model="default", quantization=q, dtype="float32", use_tqdm=False)
        try:
            o = llm.generate([TEXT], SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1), use_tqdm=False)[0]
            chat = llm.chat([{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                            SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0].outputs[0].text
            n_fp8 = sum(1 for m in llm.llm_engine.core.executor.runner.model.modules()
                        if getattr(m, "weight", None) is not None and m.weight.dtype == torch.float8_e4m3fn)
        finally:
            llm.shutdown()
        out[q] = (o.prompt_token_ids, o.prompt_logprobs, chat, n_fp8)
    return out


def test_smollm2_in_fp8_answers_and_stays_close(smollm2_prompt_logprobs):
    ids, ref, _, n_ref = smollm2_prompt_logprobs[None]
    _, got, chat, n_fp8 = smollm2_prompt_logprobs["fp8"]
    assert n_ref == 0 and n_fp8 == 30 * 4  # 30 layers x (qkv, o, gate_up, down); embeddings / LM head stay
    assert "Paris" in chat
    diffs, agree = [], 0
    for i in range(1, len(ids)):
        diffs.append(abs(ref[i][ids[i]].logprob - got[i][ids[i]].logprob))
        top = [max(d, key=lambda t: d[t].logprob) for d in (ref[i], got[i])]
        agree += top[0] == top[1]
    # measured: mean |delta logprob| 0.29 nats, top-1 agreement 86% (a 135M model in fp8)
    assert sum(diffs) / len(diffs) < 0.5
    assert agree / len(diffs) >= 0.75


def test_smollm2_with_an_fp8_kv_cache_answers_and_stays_close(smollm2_prompt_logprobs):
    """``--kv-cache-dtype fp8`` (K/V stored as e4m3 with scale 1) on the real weights."""
    ids, ref, _, _ = smollm2_prompt_logprobs[None]
    llm = LLM(model="default", kv_cache_dtype="fp8", dtype="float32", use_tqdm=False)
    try:
        assert llm.llm_engine.core.executor.runner.kv_cache.dtype == torch.float8_e4m3fn
        o = llm.generate([TEXT], SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1), use_tqdm=False)[0]
        chat = llm.chat([{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                        SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0].outputs[0].text
    finally:
        llm.shutdown()
    assert o.prompt_token_ids == ids and "Paris" in chat
    diffs = [abs(ref[i][ids[i]].logprob - o.prompt_logprobs[i][ids[i]].logprob) for i in range(1, len(ids))]
    mean = sum(diffs) / len(diffs)
    print(f"fp8 KV cache: mean |delta logprob| {mean:.3f} nats")
    assert mean < 0.3  # measured: 0.14 nats (SmolLM2-135M, float32 weights)


def test_quantization_flag_is_validated():
    with pytest.raises(ValueError, match="quantization must be one of .*fp8.*, got 'int3'"):
        EngineArgs(model="default", quantization="int3").create_engine_config()
    with pytest.raises(ValueError, match="quantization='bitsandbytes': bitsandbytes checkpoints are not supported"):
        EngineArgs(model="default", quantization="bitsandbytes").create_engine_config()


def test_fp8_needs_fp8_tensor_cores(monkeypatch):
    """No GPU here: the capability query is replaced to check the message an A100 user gets."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(ValueError, match="compute capability >= 8.9"):
        check_fp8_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_fp8_device("cuda:0")
    check_fp8_device("cpu")
