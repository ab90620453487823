"""Copy-on-write forks for ``n > 1``: the prompt is prefilled once and the other children share its
blocks; the first write into a shared block copies it. Outputs equal ``n`` independent requests
(seeds ``seed + i``), and the KV memory is much lower."""
from __future__ import annotations

import pytest

from pagedserve import LLM, SamplingParams

PROMPT = [(31 * j) % 800 + 40 for j in range(42)]  # 42 tokens: (42 - 1) % 4 != 0 → one partial shared block


def _engine(model_dir: str, **kw) -> LLM:
    kw.setdefault("num_gpu_blocks_override", 400)
    kw.setdefault("enable_prefix_caching", False)  # sharing through forks only, not through the prefix cache
    return LLM(model_dir, dtype="float32", device="cpu", max_model_len=128, use_tqdm=False, block_size=4, **kw)


@pytest.fixture(scope="module")
def llm(tiny_models) -> LLM:
    return _engine(tiny_models["qwen3"])


def _peak_run(llm: LLM, prompts: list, params: list) -> tuple[list, int]:
    eng = llm.llm_engine
    pool = eng.core.scheduler.kv.pool
    ids = [f"p{i}-{id(params)}" for i in range(len(prompts))]
    for rid, p, sp in zip(ids, prompts, params):
        eng.add_request(rid, {"prompt_token_ids": p}, sp)
    done, peak = {}, 0
    while eng.has_unfinished_requests():
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o
        peak = max(peak, pool.num_blocks - pool.num_free_blocks)
    return [done[r] for r in ids], peak


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_forked_children_equal_independent_requests(llm, temperature):
    n, seed, max_new = 4, 17, 9
    kv = llm.llm_engine.core.scheduler.kv
    copies0 = kv.num_copies
    sp = SamplingParams(n=n, temperature=temperature, seed=seed, max_tokens=max_new, ignore_eos=True)
    (forked,), peak_fork = _peak_run(llm, [PROMPT], [sp])
    assert kv.num_copies - copies0 == n - 1  # each extra child copies the shared partial block once
    singles = [SamplingParams(temperature=temperature, seed=seed + i, max_tokens=max_new, ignore_eos=True)
               for i in range(n)]
    alone, peak_alone = _peak_run(llm, [PROMPT] * n, singles)
    assert [c.token_ids for c in forked.outputs] == [o.outputs[0].token_ids for o in alone]
    assert peak_fork <= 0.65 * peak_alone, (peak_fork, peak_alone)  # >= 35% less KV memory
    assert kv.pool.num_free_blocks == kv.num_blocks


def test_block_aligned_prompt_shares_without_copies(llm):
    kv = llm.llm_engine.core.scheduler.kv
    copies0 = kv.num_copies
    out = llm.generate({"prompt_token_ids": PROMPT[:41]}, SamplingParams(n=3, temperature=0.0, max_tokens=4))[0]
    assert kv.num_copies == copies0  # 40 shared tokens fill 10 whole blocks: nothing is ever written into them
    assert len({tuple(c.token_ids) for c in out.outputs}) == 1


def test_children_when_the_first_child_ends_at_once(llm):
    """max_tokens=1: the first child frees its blocks right after prefill; the others run on their own."""
    out = llm.generate({"prompt_token_ids": PROMPT}, SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=1))[0]
    ref = llm.generate([{"prompt_token_ids": PROMPT}] * 3,
                       [SamplingParams(temperature=1.0, seed=5 + i, max_tokens=1) for i in range(3)])
    assert [c.token_ids for c in out.outputs] == [o.outputs[0].token_ids for o in ref]


def test_abort_parent_frees_shared_blocks(llm):
    eng = llm.llm_engine
    eng.add_request("x", {"prompt_token_ids": PROMPT}, SamplingParams(n=3, temperature=1.0, max_tokens=50))
    for _ in range(3):
        eng.step()
    sched = eng.core.scheduler
    assert any(b.ref_cnt > 1 for blocks in sched.kv.req_to_blocks.values() for b in blocks)
    eng.abort_request("x")
    assert not eng.has_unfinished_requests()
    assert sched.kv.pool.num_free_blocks == sched.kv.num_blocks


def test_fork_with_preemption_and_prefix_cache(tiny_models):
    llm = _engine(tiny_models["qwen3"], num_gpu_blocks_override=18, enable_prefix_caching=True,
                  preemption_mode="auto", swap_space=0.001, max_num_batched_tokens=32)
    sp = SamplingParams(n=3, temperature=1.0, seed=2, max_tokens=16, ignore_eos=True)
    prompts = [{"prompt_token_ids": PROMPT}, {"prompt_token_ids": PROMPT[:30]}]
    out = llm.generate(prompts, sp)
    roomy = _engine(tiny_models["qwen3"]).generate(prompts, sp)
    assert [[c.token_ids for c in o.outputs] for o in out] == [[c.token_ids for c in o.outputs] for o in roomy]
    assert llm.llm_engine.core.scheduler.num_preemptions > 0
