"""Issue 20's dense families against HF transformers in float32: Mistral with a real sliding window
(its blocks left of the window freed), Qwen2 with YaRN, Qwen2 with one windowed and one full layer,
Gemma 2 (soft-capping, sandwich norms, local/global layers), Gemma 3 text (q/k norms, a local RoPE
and a linearly scaled global one), Phi-3 with fused checkpoint projections and LongRoPE. Tiny
random models (windows of 8 tokens, prompts of 20-30) run with chunked prefill across the window
boundary (5-token chunks; 12 for Mistral), prefix caching with a real hit, and a cache small
enough to force preemption; greedy tokens must equal HF generate and prompt logprobs HF's
log-softmax within 1e-4."""
from __future__ import annotations

import pytest
import torch

from pagedserve import LLM, SamplingParams
from tests.runtime.model_factory import FAMILIES, hf_greedy

TEXT = ("The quick brown fox jumps over the lazy dog because it was bored of waiting for the farmer "
        "to open the gate of the old barn near the river.")
MAX_NEW = 10


def _prompts(llm: LLM) -> list[list[int]]:
    ids = llm.get_tokenizer().encode(TEXT)
    # <= 30 tokens + 10 new: inside Phi-3's original 48 positions (layers/rotary.py: past them the
    # long factors apply per position, where HF re-encodes the whole sequence)
    return [ids[:30], ids[3:25], ids[:21] + ids[25:28], ids[10:30]]


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_family_matches_hf(family_models, arch):
    model_dir = family_models[arch]
    llm = LLM(model_dir, dtype="float32", device="cpu", max_model_len=128, use_tqdm=False,
              block_size=4, enable_prefix_caching=True,
              # Mistral frees the blocks left of its window: more concurrency to need preemption
              max_num_batched_tokens=12 if arch == "mistral_sw" else 5,
              num_gpu_blocks_override=10 if arch == "mistral_sw" else 12)
    prompts = _prompts(llm)
    if arch == "mistral_sw":  # a request holds ~3 blocks at a time here: more of them to preempt
        ids = llm.get_tokenizer().encode(TEXT)
        prompts += [ids[5:28], ids[1:26], ids[7:30], ids[2:22]]
    assert all(len(p) > 8 for p in prompts), "prompts must be longer than the window"
    sp = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    for p, out in zip(prompts, outs):
        ref, _ = hf_greedy(model_dir, p, MAX_NEW)
        assert out.outputs[0].token_ids == ref, f"{arch}: prompt {p[:5]}..."
    sched = llm.llm_engine.core.scheduler
    assert sched.num_preemptions > 0, "the small cache should force preemption"
    if arch == "mistral_sw":  # every layer windowed: blocks left of the window went back to the pool
        assert sched.kv.sliding_window == 8 and sched.kv.num_window_freed > 0
    else:
        assert sched.kv.sliding_window is None
    # the first prompt again: served from the prefix cache, same tokens (a windowed model's blocks
    # left the window early and were evicted by the others: run it once alone first)
    if arch == "mistral_sw":
        llm.generate({"prompt_token_ids": prompts[0]}, sp, use_tqdm=False)
    again = llm.generate({"prompt_token_ids": prompts[0]}, sp, use_tqdm=False)[0]
    assert again.num_cached_tokens >= 16
    assert again.outputs[0].token_ids == outs[0].outputs[0].token_ids

    # prompt logprobs across the chunks (no prefix-cache hits for these)
    from tests.runtime.model_factory import _hf_model

    prompt = prompts[0]
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1),
                       use_tqdm=False)[0]
    with torch.no_grad():
        lp = _hf_model(model_dir)(torch.tensor([prompt])).logits[0].float().log_softmax(-1)
    for pos in range(1, len(prompt)):
        got = out.prompt_logprobs[pos][prompt[pos]].logprob
        assert abs(got - lp[pos - 1, prompt[pos]].item()) < 1e-4, f"{arch}: position {pos}"
    pool = sched.kv.pool
    assert pool.num_free_blocks == pool.num_blocks


def test_piecewise_pieces_keep_per_layer_windows(family_models):
    """The piecewise-graph split (run eagerly on CPU) calls each layer's attention with its own
    window, soft-cap and scale: Gemma 2's tokens equal the plain forward's."""
    from pagedserve.worker.piecewise_graphs import PiecewiseCUDAGraphs, supports_piecewise

    def run(piecewise: bool) -> list[list[int]]:
        llm = LLM(family_models["gemma2"], device="cpu", dtype="float32", max_num_batched_tokens=16,
                  use_tqdm=False)
        runner = llm.llm_engine.core.runner
        if piecewise:
            assert supports_piecewise(runner.model)
            runner.piecewise = PiecewiseCUDAGraphs(runner, 16, use_graphs=False)
        outs = llm.generate([{"prompt_token_ids": p} for p in _prompts(llm)[:2]],
                            SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), use_tqdm=False)
        return [o.outputs[0].token_ids for o in outs]

    assert run(True) == run(False)
