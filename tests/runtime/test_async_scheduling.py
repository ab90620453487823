"""Async scheduling (step N+1 scheduled and queued before step N's tokens are read back) gives
exactly the outputs of the synchronous loop: greedy and seeded sampling, chunked prefill,
preemption, stop tokens found one step late, n > 1 forks, aborts."""
from __future__ import annotations

import pytest

from pagedserve import LLM, SamplingParams

PROMPTS = [[5 + (i * 7) % 200 for i in range(n)] for n in (1, 9, 30, 17, 55, 4)]


def _run(model_dir: str, async_on: bool, params: list[SamplingParams], **kw) -> tuple[list, LLM]:
    llm = LLM(model_dir, device="cpu", dtype="float32", skip_tokenizer_init=True, use_tqdm=False,
              async_scheduling=async_on, **kw)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [[(c.token_ids, c.finish_reason) for c in o.outputs] for o in outs], llm


@pytest.mark.parametrize("setting", [
    dict(),
    dict(max_num_batched_tokens=16),
    dict(num_gpu_blocks_override=10, block_size=8, max_num_batched_tokens=32),
])
def test_async_equals_sync(tiny_models, setting):
    params = [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
              SamplingParams(temperature=1.0, seed=3, max_tokens=7, ignore_eos=True),
              SamplingParams(temperature=0.8, top_k=20, seed=11, max_tokens=15, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=9, n=2, ignore_eos=True),
              SamplingParams(temperature=1.0, seed=5, max_tokens=10, n=3, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)]
    sync, _ = _run(tiny_models["llama"], False, params, **setting)
    asyn, llm = _run(tiny_models["llama"], True, params, **setting)
    assert asyn == sync
    pool = llm.llm_engine.core.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks
    if "num_gpu_blocks_override" in setting:
        assert llm.llm_engine.core.scheduler.num_preemptions > 0


def test_async_stop_token_found_one_step_late(tiny_models):
    """A stop token is only seen after the next step was queued: the extra step is discarded."""
    sync, _ = _run(tiny_models["qwen2"], False, [SamplingParams(temperature=0, max_tokens=20)] * len(PROMPTS))
    stop_ids = sorted({t for outs in sync for toks, _ in outs for t in toks[2:4]})
    params = [SamplingParams(temperature=0, max_tokens=20, stop_token_ids=stop_ids)] * len(PROMPTS)
    sync, _ = _run(tiny_models["qwen2"], False, params)
    asyn, llm = _run(tiny_models["qwen2"], True, params)
    assert asyn == sync
    assert any(reason == "stop" for outs in sync for _, reason in outs)
    pool = llm.llm_engine.core.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks


def test_async_abort_mid_flight(tiny_models):
    llm = LLM(tiny_models["llama"], device="cpu", skip_tokenizer_init=True, use_tqdm=False, async_scheduling=True)
    eng = llm.llm_engine
    for i, p in enumerate(PROMPTS):
        eng.add_request(str(i), {"prompt_token_ids": p}, SamplingParams(max_tokens=30, ignore_eos=True))
    for _ in range(3):
        eng.step()
    eng.abort_request(["1", "3"])
    while eng.has_unfinished_requests():
        eng.step()
    pool = eng.core.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks


def test_penalties_and_beam_search_pause_async_and_count_back_to_zero(tiny_models):
    """Requests that need their tokens on the host each step (penalties, beam search) make the loop
    synchronous while they run; finishing or aborting them brings the count back to zero."""
    llm = LLM(tiny_models["llama"], device="cpu", skip_tokenizer_init=True, use_tqdm=False, async_scheduling=True)
    eng, core = llm.llm_engine, llm.llm_engine.core
    eng.add_request("plain", {"prompt_token_ids": PROMPTS[1]}, SamplingParams(max_tokens=6, ignore_eos=True))
    assert not core._needs_sync()
    eng.add_request("pen", {"prompt_token_ids": PROMPTS[2]},
                    SamplingParams(max_tokens=6, repetition_penalty=1.3, ignore_eos=True))
    eng.add_request("beam", {"prompt_token_ids": PROMPTS[3]},
                    SamplingParams(temperature=0, max_tokens=4, use_beam_search=True, beam_width=2, n=2,
                                   ignore_eos=True))
    eng.add_request("freq", {"prompt_token_ids": PROMPTS[4]},
                    SamplingParams(max_tokens=30, frequency_penalty=0.5, ignore_eos=True))
    assert core._needs_sync()
    for _ in range(2):
        eng.step()
    eng.abort_request(["freq"])
    while eng.has_unfinished_requests():
        eng.step()
    assert core.scheduler.num_host_sync_requests == 0 and not core._needs_sync()
