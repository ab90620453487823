"""Preemption by recompute, swap (CPU block pool) and auto: identical outputs (greedy = HF's tokens;
seeded sampling) under a cache too small for the batch, per-mode counters, a log line per
preemption, and both pools empty at the end."""
from __future__ import annotations

import logging

import pytest

from pagedserve import LLM, SamplingParams
from tests.runtime.model_factory import hf_greedy

PROMPTS = [[(13 * i + 7 * j) % 700 + 20 for j in range(n)] for i, n in enumerate([23, 5, 31, 12, 17, 9])]
MAX_NEW = 14


def _engine(model_dir: str, mode: str, **kw) -> LLM:
    return LLM(model_dir, dtype="float32", device="cpu", max_model_len=128, use_tqdm=False, block_size=4,
               num_gpu_blocks_override=kw.pop("blocks", 20), max_num_batched_tokens=48, preemption_mode=mode,
               swap_space=0.002, **kw)


def _free(llm: LLM) -> None:
    kv = llm.llm_engine.core.scheduler.kv
    assert kv.pool.num_free_blocks == kv.num_blocks and not kv.req_to_blocks
    assert kv.cpu_pool is None or kv.cpu_pool.num_free_blocks == kv.cpu_pool.num_blocks


@pytest.fixture(scope="module")
def hf_ref(tiny_models) -> list[list[int]]:
    return [hf_greedy(tiny_models["mistral"], p, MAX_NEW)[0] for p in PROMPTS]


@pytest.mark.parametrize("mode", ["recompute", "swap", "auto"])
def test_greedy_outputs_equal_hf_under_preemption(tiny_models, hf_ref, mode, caplog):
    llm = _engine(tiny_models["mistral"], mode, auto_swap_min_tokens=20)
    with caplog.at_level(logging.INFO, logger="pagedserve.core.scheduler"):
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                            SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in outs] == hf_ref
    st = llm.llm_engine.core.get_stats()
    assert st.num_preemptions_total == st.num_preemptions_recompute_total + st.num_preemptions_swap_total > 0
    if mode == "recompute":
        assert st.num_preemptions_swap_total == 0 and st.num_cpu_blocks == 0
    elif mode == "swap":
        assert st.num_preemptions_recompute_total == 0
        assert st.num_blocks_swapped_out_total > 0 and st.num_blocks_swapped_in_total > 0
    else:  # auto picks per request: long contexts swap, short ones recompute
        assert st.num_preemptions_swap_total > 0 and st.num_preemptions_recompute_total > 0
    lines = [r.getMessage() for r in caplog.records if "preempted" in r.getMessage()]
    assert len(lines) == st.num_preemptions_total
    assert all("mode=" in m and "tokens" in m for m in lines)
    _free(llm)


def test_seeded_sampling_identical_across_modes(tiny_models):
    sp = SamplingParams(temperature=0.9, top_k=50, seed=3, max_tokens=MAX_NEW, ignore_eos=True)
    results = []
    for mode, blocks in (("recompute", 400), ("recompute", 20), ("swap", 20), ("auto", 20)):
        llm = _engine(tiny_models["llama"], mode, blocks=blocks)
        results.append([o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp)])
        _free(llm)
    assert results[1] == results[0] and results[2] == results[0] and results[3] == results[0]


def test_swap_falls_back_to_recompute_without_cpu_room(tiny_models, hf_ref):
    llm = LLM(tiny_models["mistral"], dtype="float32", device="cpu", max_model_len=128, use_tqdm=False, block_size=4,
              num_gpu_blocks_override=20, max_num_batched_tokens=48, preemption_mode="swap", swap_space=0.00001)
    assert llm.llm_engine.core.scheduler.kv.cpu_pool.num_blocks < 8
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                        SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in outs] == hf_ref
    assert llm.llm_engine.core.scheduler.num_preemptions_by_mode["recompute"] > 0
    _free(llm)
