"""Mixture-of-Experts models (Mixtral, Qwen2-MoE, Qwen3-MoE) equal HF transformers in float32:
greedy tokens and prompt logprobs, with chunked prefill, prefix-cache hits and preemption; the
per-expert and the stacked (transformers 5 in-memory) checkpoint layouts; config errors."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from pagedserve import LLM, SamplingParams
from tests.runtime.model_factory import hf_greedy
from tests.runtime.moe_factory import MOE_ARCHS, make_tiny_moe

SHARED = "Once upon a time, in a kingdom by the sea, there lived a king who had three daughters and"
PROMPTS = [SHARED + " the eldest", SHARED + " a dragon", "Hello",
           "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) +",
           "Paris is the capital of"]
MAX_NEW = 10

# 9 blocks of 8 tokens for 5 requests (preempted and recomputed), prefill chunks of <= 16 tokens; the
# first two prompts share two blocks (prefix-cache hits)
ENGINE = dict(num_gpu_blocks_override=9, block_size=8, max_num_batched_tokens=16)


@pytest.fixture(scope="session")
def moe_models(tmp_path_factory, smollm2_dir) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_moe")
    out = {arch: make_tiny_moe(str(root / arch), arch, smollm2_dir, seed=11 + i) for i, arch in enumerate(MOE_ARCHS)}
    out["mixtral_stacked"] = make_tiny_moe(str(root / "mixtral_stacked"), "mixtral", smollm2_dir, seed=11, stacked=True)
    return out


def _engine(model_dir: str, **kw) -> LLM:
    return LLM(model_dir, dtype="float32", device="cpu", max_model_len=256, use_tqdm=False, **kw)


@pytest.mark.parametrize("arch", list(MOE_ARCHS))
def test_greedy_and_prompt_logprobs_match_hf(moe_models, arch):
    """Greedy tokens equal HF generate (two rounds) under chunked prefill, prefix-cache hits and
    preemption; prompt logprobs, scored across the chunks, within 1e-4."""
    from tests.runtime.model_factory import _hf_model

    model_dir = moe_models[arch]
    llm = _engine(model_dir, **ENGINE)
    tok = llm.get_tokenizer()
    prompts = [tok.encode(p) for p in PROMPTS]
    refs = [hf_greedy(model_dir, p, MAX_NEW)[0] for p in prompts]
    assert len({tuple(r) for r in refs}) == len(refs)  # the tiny model is not degenerate
    sp = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
    # prompt logprobs of the longest prompt without a shared prefix (they bypass the prefix cache)
    lp_params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, prompt_logprobs=3)
    cached = 0
    for params in ([sp] * len(prompts), [sp, sp, sp, lp_params, sp]):
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        cached += sum(o.num_cached_tokens for o in outs)
        for p, out, ref in zip(prompts, outs, refs):
            assert out.outputs[0].token_ids == ref, f"{arch}: prompt {p[:5]}..."
    core = llm.llm_engine.core
    assert core.scheduler.num_preemptions > 0, "the tiny cache should force preemption"
    assert cached > 0, "the shared prefix should hit the prefix cache"
    pool = core.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks
    prompt = prompts[3]
    assert len(prompt) > ENGINE["max_num_batched_tokens"]  # scored across prefill chunks
    with torch.no_grad():
        lp = _hf_model(model_dir)(torch.tensor([prompt])).logits[0].log_softmax(-1)
    got = outs[3].prompt_logprobs
    for pos in range(1, len(prompt)):
        top = lp[pos - 1].topk(3)
        for tid, val in zip([prompt[pos], *top.indices.tolist()], [lp[pos - 1, prompt[pos]].item(),
                                                                   *top.values.tolist()]):
            assert abs(got[pos][tid].logprob - val) < 1e-4, (pos, tid)


def test_stacked_checkpoint_equals_per_expert(moe_models):
    """transformers 5's stacked 3-D expert tensors load to the same weights as the per-expert ones."""
    a = _engine(moe_models["mixtral"]).llm_engine.core.runner.model.state_dict()
    b = _engine(moe_models["mixtral_stacked"]).llm_engine.core.runner.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert a["model.layers.0.mlp.experts.w13_weight"].shape == (4, 2 * 96, 64)


def test_missing_expert_and_bad_config_are_clear_errors(moe_models, tmp_path):
    from safetensors.torch import load_file, save_file

    d = str(tmp_path / "m")
    shutil.copytree(moe_models["qwen3_moe"], d)
    state = load_file(os.path.join(d, "model.safetensors"))
    del state["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(state, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing 1 weight.*experts\.w13_weight\[\(3, 'w3'\)\]"):
        _engine(d)
    cfg = json.load(open(os.path.join(d, "config.json")))
    json.dump({**cfg, "num_experts_per_tok": 99}, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        _engine(d)


def test_dummy_weights_generate(moe_models):
    """load_format='dummy' fills the stacked expert tensors (the benchmark's Mixtral / Qwen3-MoE shapes)."""
    llm = _engine(moe_models["qwen3_moe"], load_format="dummy")
    model = llm.llm_engine.core.runner.model
    w13 = model.model.layers[1].mlp.experts.w13_weight
    assert w13.abs().max() <= 2e-2 and w13.std() > 5e-3 and not torch.equal(w13[0], w13[1])
    out = llm.generate({"prompt_token_ids": [1, 2, 3]}, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                       use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


def _tp_outputs(model_dir: str, tp: int, **kw) -> list:
    llm = LLM(model_dir, device="cpu", dtype="float32", skip_tokenizer_init=True, use_tqdm=False,
              tensor_parallel_size=tp, kv_cache_memory=1 << 24, max_num_batched_tokens=16, **kw)
    prompts = [[5 + (i * 7) % 200 for i in range(n)] for n in (1, 9, 30, 17)]
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, prompt_logprobs=1)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        return [(o.outputs[0].token_ids, [None if d is None else {t: x.logprob for t, x in d.items()}
                                          for d in o.prompt_logprobs]) for o in outs]
    finally:
        llm.llm_engine.core.shutdown()


@pytest.mark.parametrize("arch,load_format", [("qwen2_moe", "auto"), ("mixtral", "dummy")])
def test_tp2_equals_tp1(moe_models, arch, load_format):
    """Two ranks over gloo, each holding half of every expert's intermediate dimension (and of the
    shared expert): the same greedy tokens, prompt logprobs within 1e-4. Dummy weights draw the
    whole stacked tensor and keep each rank's slice, so TP=2 holds TP=1's weights."""
    ref = _tp_outputs(moe_models[arch], 1, load_format=load_format)
    got = _tp_outputs(moe_models[arch], 2, load_format=load_format)
    for (rt, rl), (gt, gl) in zip(ref, got, strict=True):
        assert gt == rt
        for rd, gd in zip(rl, gl, strict=True):
            assert (rd is None) == (gd is None)
            for t in rd or {}:
                assert abs(rd[t] - gd[t]) < 1e-4


def test_tensor_parallel_must_divide_the_expert_sizes():
    from pagedserve.arch_config import ArchConfig
    from pagedserve.distributed.parallel_state import check_tensor_parallel

    cfg = dict(architectures=["Qwen2MoeForCausalLM"], vocab_size=32, hidden_size=48, intermediate_size=96,
               num_hidden_layers=1, num_attention_heads=6, num_experts=4, num_experts_per_tok=2,
               moe_intermediate_size=36, shared_expert_intermediate_size=40)
    check_tensor_parallel(ArchConfig.from_hf(cfg), 2)
    with pytest.raises(ValueError, match="shared_expert_intermediate_size 40"):
        check_tensor_parallel(ArchConfig.from_hf(cfg), 3)
    with pytest.raises(ValueError, match="moe_intermediate_size 32"):
        check_tensor_parallel(ArchConfig.from_hf({**cfg, "moe_intermediate_size": 32}), 3)
