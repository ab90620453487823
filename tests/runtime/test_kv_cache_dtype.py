"""``--kv-cache-dtype fp8`` on CPU (the torch attention path): the cache is fp8 and holds four
times the float32 blocks in the same memory; outputs do not change under preemption by recompute
or swap, nor with copy-on-write children; bad values are refused."""
from __future__ import annotations

import pytest
import torch

from pagedserve import LLM, EngineArgs, SamplingParams

PROMPTS = [[(13 * i + 7 * j) % 700 + 20 for j in range(n)] for i, n in enumerate([23, 5, 31, 12, 17, 9])]


def _llm(model_dir: str, kv: str, **kw) -> LLM:
    return LLM(model_dir, dtype="float32", device="cpu", max_model_len=128, use_tqdm=False, block_size=4,
               max_num_batched_tokens=48, swap_space=0.002, kv_cache_dtype=kv, **kw)


@pytest.mark.parametrize("kv,dtype", [("fp8", torch.float8_e4m3fn), ("fp8_e4m3", torch.float8_e4m3fn),
                                      ("fp8_e5m2", torch.float8_e5m2)])
def test_fp8_cache_holds_four_times_the_float32_blocks(tiny_models, kv, dtype):
    budget = 1 << 20
    blocks = {}
    for name in ("auto", kv):
        llm = _llm(tiny_models["llama"], name, kv_cache_memory=budget)
        runner = llm.llm_engine.core.executor.runner
        assert runner.kv_cache.dtype == (torch.float32 if name == "auto" else dtype)
        blocks[name] = llm.llm_engine.config.cache_config.num_gpu_blocks
        out = llm.generate([{"prompt_token_ids": PROMPTS[0]}], SamplingParams(temperature=0, max_tokens=4))
        assert len(out[0].outputs[0].token_ids) == 4
        llm.shutdown()
    assert blocks[kv] == 4 * blocks["auto"], blocks


def test_fp8_cache_outputs_survive_preemption_and_copy_on_write(tiny_models):
    sp = SamplingParams(temperature=0.0, max_tokens=14, ignore_eos=True)
    results = []
    for mode, blocks in (("recompute", 400), ("recompute", 20), ("swap", 20)):
        llm = _llm(tiny_models["mistral"], "fp8", preemption_mode=mode, num_gpu_blocks_override=blocks)
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp)
        st = llm.llm_engine.core.get_stats()
        assert (st.num_preemptions_total > 0) == (blocks == 20)
        if mode == "swap":
            assert st.num_blocks_swapped_out_total > 0 and st.num_blocks_swapped_in_total > 0
        results.append([o.outputs[0].token_ids for o in outs])
        if mode == "recompute" and blocks == 400:  # n=3 greedy children share the prompt's blocks (CoW)
            kids = llm.generate([{"prompt_token_ids": PROMPTS[0]}], SamplingParams(n=3, temperature=0.0,
                                                                                  max_tokens=14, ignore_eos=True))
            assert [c.token_ids for c in kids[0].outputs] == [results[0][0]] * 3
        llm.shutdown()
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("value", ["int8", "fp16", "FP8"])
def test_bad_kv_cache_dtype_is_refused(tiny_models, value):
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of auto, fp8, fp8_e4m3, fp8_e5m2"):
        EngineArgs(model=tiny_models["llama"], device="cpu", kv_cache_dtype=value).create_engine_config()
