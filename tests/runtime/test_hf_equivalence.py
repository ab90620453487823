"""Greedy outputs equal HF transformers token for token (float32), through the paged KV cache,
in mixed batches, with chunked prefill and with preemption; per-step logits within 1e-4."""
from __future__ import annotations

import pytest
import torch

from pagedserve import LLM, SamplingParams
from tests.runtime.model_factory import ARCHS, hf_greedy

PROMPTS = [
    "The quick brown fox jumps over the lazy dog because",
    "Hello",
    "In 1492, Columbus sailed the ocean blue. Later that year he reached islands that",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Paris is the capital of",
]
MAX_NEW = 12

# engine settings: plain; tiny token budget (chunked prefill); tiny cache (preemption)
SETTINGS = {
    "plain": dict(),
    "chunked": dict(max_num_batched_tokens=7),
    "preempt": dict(num_gpu_blocks_override=9, block_size=8, max_num_batched_tokens=64),
}


def _engine(model_dir: str, **kw) -> LLM:
    return LLM(model_dir, dtype="float32", device="cpu", max_model_len=256, use_tqdm=False, **kw)


def _ids(llm: LLM) -> list[list[int]]:
    tok = llm.get_tokenizer()
    return [tok.encode(p) for p in PROMPTS]


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("arch", list(ARCHS) + ["llama_sharded"])
def test_greedy_matches_hf(tiny_models, arch, setting):
    model_dir = tiny_models[arch]
    llm = _engine(model_dir, **SETTINGS[setting])
    prompts = _ids(llm)
    sp = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    for p, out in zip(prompts, outs):
        ref, _ = hf_greedy(model_dir, p, MAX_NEW)
        assert out.outputs[0].token_ids == ref, f"{arch}/{setting}: prompt {p[:5]}..."
    if setting == "preempt":
        assert llm.llm_engine.core.scheduler.num_preemptions > 0, "the tiny cache should force preemption"
    pool = llm.llm_engine.core.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks


@pytest.mark.parametrize("arch", ["llama", "qwen3", "llama3_scaled"])
def test_step_logits_match_hf(tiny_models, arch):
    """Every decode step's logits (spied at compute_logits) are within 1e-4 of HF's."""
    model_dir = tiny_models[arch]
    llm = _engine(model_dir, max_num_batched_tokens=5)  # the prompt is prefilled in chunks of 5
    model = llm.llm_engine.core.runner.model
    seen: list[torch.Tensor] = []
    orig = model.compute_logits
    model.compute_logits = lambda h: seen.append(orig(h)) or seen[-1]  # spy: record, return unchanged
    prompt = _ids(llm)[2]
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0.0, max_tokens=MAX_NEW,
                                                                     ignore_eos=True), use_tqdm=False)
    ref_tokens, ref_logits = hf_greedy(model_dir, prompt, MAX_NEW)
    assert out[0].outputs[0].token_ids == ref_tokens
    ours = [s[-1] for s in seen]  # one sampled row per step that reached the end of the tokens
    assert len(ours) == MAX_NEW
    for step, (a, b) in enumerate(zip(ours, ref_logits)):
        assert torch.allclose(a.float(), b.float(), atol=1e-4, rtol=0), f"step {step}: max diff {(a - b).abs().max()}"


def test_prompt_logprobs_match_hf(tiny_models):
    """prompt_logprobs (scored across prefill chunks) equal HF's log-softmax over the prompt."""
    from transformers import AutoModelForCausalLM

    model_dir = tiny_models["llama"]
    llm = _engine(model_dir, max_num_batched_tokens=6)
    prompt = _ids(llm)[0]
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0.0, max_tokens=2,
                                                                     prompt_logprobs=2, logprobs=3), use_tqdm=False)[0]
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        lp = hf(torch.tensor([prompt])).logits[0].log_softmax(-1)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for pos in range(1, len(prompt)):
        d = out.prompt_logprobs[pos]
        assert prompt[pos] in d
        assert abs(d[prompt[pos]].logprob - lp[pos - 1, prompt[pos]].item()) < 1e-4
        top = lp[pos - 1].topk(2)
        for tid, val in zip(top.indices.tolist(), top.values.tolist()):
            assert abs(d[tid].logprob - val) < 1e-4
    # sample logprobs: the chosen token first, with its rank; 3 alternatives
    c = out.outputs[0]
    assert len(c.logprobs) == 2 and c.logprobs[0][c.token_ids[0]].rank == 1
    assert abs(c.cumulative_logprob - sum(d[t].logprob for d, t in zip(c.logprobs, c.token_ids))) < 1e-6


def test_smollm2_real_weights_match_hf(smollm2_dir):
    """The real SmolLM2 weights: a mixed batch under a small token budget equals HF generate, eos included."""
    llm = _engine(smollm2_dir, max_num_batched_tokens=16, num_gpu_blocks_override=12, block_size=8)
    tok = llm.get_tokenizer()
    chats = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
             for q in ("What is the capital of France?", "Name a colour.")]
    prompts = [tok.encode(c) for c in chats] + [tok.encode(PROMPTS[0])]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0.0, max_tokens=10), use_tqdm=False)
    for p, out in zip(prompts, outs):
        ref, _ = hf_greedy(smollm2_dir, p, 10, stop_at_eos=True)
        got = out.outputs[0].token_ids
        assert got == ref, (tok.decode(got), tok.decode(ref))
