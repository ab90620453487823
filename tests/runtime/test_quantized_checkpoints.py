"""Pre-quantized checkpoints (GPTQ, AWQ, compressed-tensors W4A16 / W8A16), written at test time by
``tests/quant_writers.py``: the engine's prompt log-probabilities and greedy tokens equal those of a
float model holding the dequantized weights (float32 on CPU: |delta logprob| < 1e-4), on a tiny random
Llama and on SmolLM2-135M; detection from config.json; TP=2 equal to TP=1 for an act-order GPTQ
model; dummy weights; clear errors."""
from __future__ import annotations

import json
import os

import pytest
import torch

from pagedserve import LLM, EngineArgs, SamplingParams
from tests.quant_writers import write_quantized

PROMPTS = [[5 + (i * 7) % 200 for i in range(n)] for n in (9, 30, 4)]
KV = dict(kv_cache_memory=1 << 24)
TOL = 1e-4  # float32 on both sides; the dequantized weights are the same numbers


def _llm(model_dir: str, **kw) -> LLM:
    return LLM(model_dir, device="cpu", dtype="float32", skip_tokenizer_init=True, use_tqdm=False, **KV, **kw)


def _run(model_dir: str, max_tokens: int = 8, **kw) -> list:
    llm = _llm(model_dir, **kw)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                            SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, prompt_logprobs=1,
                                           logprobs=1), use_tqdm=False)
    finally:
        llm.shutdown()
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs, o.prompt_logprobs) for o in outs]


def _assert_close(ref: list, got: list, tol: float = TOL) -> None:
    for (rt, rl, rp), (gt, gl, gp) in zip(ref, got, strict=True):
        assert gt == rt
        for rd, gd in zip(rl, gl, strict=True):
            for t in rd:
                assert abs(rd[t].logprob - gd[t].logprob) < tol
        for rd, gd in zip(rp[1:], gp[1:], strict=True):
            for t in rd:
                assert abs(rd[t].logprob - gd[t].logprob) < tol


FORMATS = {  # name → write_quantized kwargs (hidden 64, intermediate 128)
    "gptq4_g32_sym": dict(fmt="gptq", bits=4, group_size=32, sym=True),
    "gptq4_g32_asym_actorder": dict(fmt="gptq", bits=4, group_size=32, sym=False, desc_act=True),
    "gptq8_channel_asym_v2": dict(fmt="gptq", bits=8, group_size=-1, sym=False, checkpoint_format="gptq_v2"),
    "gptq8_g64_sym_actorder": dict(fmt="gptq", bits=8, group_size=64, sym=True, desc_act=True),
    "awq4_g32": dict(fmt="awq", bits=4, group_size=32),
    "ct_w4a16_g32_sym": dict(fmt="compressed-tensors", bits=4, group_size=32, sym=True),
    "ct_w4a16_channel_asym": dict(fmt="compressed-tensors", bits=4, group_size=-1, sym=False),
    "ct_w8a16_g64_asym": dict(fmt="compressed-tensors", bits=8, group_size=64, sym=False),
    "ct_w4a16_g32_actorder": dict(fmt="compressed-tensors-actorder", bits=4, group_size=32),
}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_models) -> dict[str, tuple[str, str]]:
    root = tmp_path_factory.mktemp("quantized")
    out = {}
    for name, kw in FORMATS.items():
        q, d = str(root / name), str(root / f"{name}_deq")
        write_quantized(tiny_models["llama3_scaled"], q, d, **kw)
        out[name] = (q, d)
    return out


@pytest.mark.parametrize("name", list(FORMATS))
def test_engine_equals_the_dequantized_float_model(quantized, name):
    q, d = quantized[name]
    _assert_close(_run(d), _run(q))


def test_detection_and_the_quantization_flag(quantized):
    q, _ = quantized["gptq4_g32_sym"]
    mc = EngineArgs(model=q, device="cpu").create_engine_config().model_config
    assert mc.quantization == "gptq" and mc.quant_config["bits"] == 4
    assert EngineArgs(model=q, device="cpu", quantization="gptq_marlin").create_engine_config().model_config.quantization == "gptq"
    with pytest.raises(ValueError, match="quantization='awq' does not match the checkpoint, which is quantized with 'gptq'"):
        EngineArgs(model=q, device="cpu", quantization="awq_marlin").create_engine_config()
    ct, _ = quantized["ct_w4a16_g32_sym"]
    assert EngineArgs(model=ct, device="cpu").create_engine_config().model_config.quantization == "compressed-tensors"
    awq, deq = quantized["awq4_g32"]
    assert EngineArgs(model=awq, device="cpu").create_engine_config().model_config.quantization == "awq"
    with pytest.raises(ValueError, match="quantization='gptq' needs a checkpoint quantized in that format"):
        EngineArgs(model=deq, device="cpu", quantization="gptq").create_engine_config()


def _edit_config(src: str, dst: str, **changes) -> str:
    """A copy of checkpoint ``src`` (weights linked) with quantization_config entries changed."""
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        if f != "config.json":
            os.symlink(os.path.join(src, f), os.path.join(dst, f))
    with open(os.path.join(src, "config.json")) as fh:
        cfg = json.load(fh)
    cfg["quantization_config"].update(changes)
    with open(os.path.join(dst, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    return dst


@pytest.mark.parametrize("src,changes,match", [
    ("gptq4_g32_sym", dict(bits=3), r"gptq: quantization_config.bits must be one of 4, 8, got 3"),
    ("gptq4_g32_sym", dict(group_size=100), r"gptq: quantization_config.group_size must be -1 .* got 100"),
    ("gptq4_g32_sym", dict(checkpoint_format="marlin"), r"checkpoint_format must be gptq \(v1\) or gptq_v2"),
    ("gptq4_g32_sym", dict(quant_method="squeezellm"), r"SqueezeLLM is not supported"),
    ("gptq4_g32_sym", dict(quant_method="int3_magic"), r"quantization must be one of .*, got 'int3_magic'"),
    ("awq4_g32", dict(bits=8), r"awq: quantization_config.bits must be one of 4, got 8"),
    ("awq4_g32", dict(version="gemv"), r"awq: quantization_config.version 'gemv' is not supported"),
    ("gptq4_g32_sym", dict(group_size=128), r"input size 64 is not a multiple of 128 \(group_size\)"),
])
def test_clear_errors(quantized, tmp_path, src, changes, match):
    d = _edit_config(quantized[src][0], str(tmp_path / "m"), **changes)
    with pytest.raises(ValueError, match=match):
        LLM(d, device="cpu", dtype="float32", skip_tokenizer_init=True, use_tqdm=False, **KV)


def test_unsupported_compressed_tensors_scheme_is_named(quantized, tmp_path):
    src = quantized["ct_w4a16_g32_sym"][0]
    with open(os.path.join(src, "config.json")) as fh:
        groups = json.load(fh)["quantization_config"]["config_groups"]
    groups["group_0"]["input_activations"] = {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True,
                                              "symmetric": True}
    d = _edit_config(src, str(tmp_path / "m"), config_groups=groups)
    with pytest.raises(ValueError, match=r"config_groups.group_0: W4A8 \(int weights, int activations\) is not "
                                         r"supported"):
        LLM(d, device="cpu", dtype="float32", skip_tokenizer_init=True, use_tqdm=False, **KV)


@pytest.mark.parametrize("name", ["gptq4_g32_asym_actorder", "ct_w4a16_g32_actorder", "awq4_g32"])
def test_tp2_equals_tp1(quantized, name):
    """Row-parallel act-order layers keep every group's scales (uneven groups per rank: the g_idx
    path); column-parallel ones split scales and packed zeros with the weight."""
    q, _ = quantized[name]
    _assert_close(_run(q), _run(q, tensor_parallel_size=2))


def test_dummy_weights_fill_packed_parameters(quantized):
    q, _ = quantized["gptq4_g32_asym_actorder"]
    got = _run(q, max_tokens=4, load_format="dummy")
    assert all(len(t) == 4 for t, _, _ in got)
    assert all(abs(lp[t].logprob) < 50 for _, lps, _ in got for lp, t in ((lp, next(iter(lp))) for lp in lps))


@pytest.fixture(scope="module")
def smollm2_quantized(tmp_path_factory, smollm2_dir) -> dict[str, tuple[str, dict]]:
    """SmolLM2-135M in GPTQ-4bit (act order) and AWQ-4bit (group 64: its hidden size 576 is no
    multiple of 128), with the dequantized weights of each."""
    root = tmp_path_factory.mktemp("smollm2_quantized")
    out = {}
    for fmt in ("gptq", "awq"):
        q = str(root / fmt)
        out[fmt] = (q, write_quantized(smollm2_dir, q, None, fmt=fmt, bits=4, group_size=64, sym=fmt == "gptq",
                                       desc_act=fmt == "gptq"))
    return out


def _run_with_weights(model_dir: str, weights: dict[str, torch.Tensor], max_tokens: int) -> list:
    """The float engine of ``model_dir`` with ``weights`` loaded over its own (through each
    parameter's sharded weight loader, as the checkpoint loader does)."""
    llm = _llm(model_dir)
    try:
        model = llm.llm_engine.core.executor.runner.model
        params = dict(model.named_parameters())
        for name, t in weights.items():
            shard = None
            for frag, (fused, sid) in model.packed_modules.items():
                if f".{frag}." in name:
                    name, shard = name.replace(f".{frag}.", f".{fused}."), sid
            p = params[name]
            p.weight_loader(p, t) if shard is None else p.weight_loader(p, t, shard)
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                            SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, prompt_logprobs=1,
                                           logprobs=1), use_tqdm=False)
    finally:
        llm.shutdown()
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs, o.prompt_logprobs) for o in outs]


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_smollm2_4bit_greedy_tokens_equal_the_dequantized_model(smollm2_dir, smollm2_quantized, fmt):
    q, weights = smollm2_quantized[fmt]
    _assert_close(_run_with_weights(smollm2_dir, weights, 12), _run(q, max_tokens=12), tol=2e-4)


def test_fused_parts_with_different_act_orders_are_refused(quantized, tmp_path):
    from safetensors.torch import load_file, save_file

    src = quantized["gptq4_g32_asym_actorder"][0]
    d = _edit_config(src, str(tmp_path / "m"))
    os.remove(os.path.join(d, "model.safetensors"))
    state = load_file(os.path.join(src, "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.g_idx"
    state[name] = state[name].flip(0).contiguous()
    save_file(state, os.path.join(d, "model.safetensors"))
    with pytest.raises(ValueError, match=r"gptq: model.layers.1.mlp.gate_up_proj: the fused parts \[0, 1\] have "
                                         r"different g_idx"):
        LLM(d, device="cpu", dtype="float32", skip_tokenizer_init=True, use_tqdm=False, **KV)
