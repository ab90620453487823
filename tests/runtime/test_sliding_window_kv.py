"""Sliding-window KV memory (every layer windowed): blocks wholly left of the window are freed and
their table entries become the null block; forks, swap out / in, prefix caching and freeing all
handle the holes (core/kv_cache_manager.py)."""
from __future__ import annotations

from pagedserve import SamplingParams
from pagedserve.core.kv_cache_manager import NULL_BLOCK, KVCacheManager
from pagedserve.request import Request


def _req(rid: str, n: int) -> Request:
    return Request(rid, list(range(100, 100 + n)), SamplingParams(max_tokens=8))


def _step(kv: KVCacheManager, req: Request, n: int) -> list[int]:
    ids = kv.allocate_slots(req, n)
    assert ids is not None
    req.num_computed_tokens += n
    kv.cache_full_blocks(req)
    return list(ids)


def test_blocks_left_of_the_window_are_freed():
    kv = KVCacheManager(num_blocks=16, block_size=4, enable_caching=True, sliding_window=6)
    r = _req("a", 20)
    _step(kv, r, 12)  # positions 0..11; the next step's first query at 12 sees 7.. -> block 0 (0..3) dead
    assert kv.pool.num_free_blocks == 13
    ids = _step(kv, r, 8)  # the first query at 12: blocks 0 (0..3) and nothing else dead yet
    assert ids[0] == NULL_BLOCK.block_id and kv.req_to_blocks["a"][0] is NULL_BLOCK
    assert kv.req_to_blocks["a"][1] is not NULL_BLOCK  # 4..7: position 7 is still in the window of 12
    assert kv.num_window_freed == 1 and kv.pool.num_free_blocks == 12
    kv.free(r)
    assert kv.pool.num_free_blocks == 16
    # the freed block kept its hash: the same prompt hits the whole chain again
    assert len(kv.get_computed_blocks(_req("b", 20))) == 4


def test_fork_swap_and_free_with_holes():
    kv = KVCacheManager(num_blocks=12, block_size=4, enable_caching=False, num_cpu_blocks=12, sliding_window=4)
    parent = _req("p", 16)
    _step(kv, parent, 12)
    _step(kv, parent, 4)  # query at 12 sees 9..: blocks 0, 1 (0..7) dead
    assert kv.req_to_blocks["p"][:2] == [NULL_BLOCK, NULL_BLOCK]
    child = _req("c", 16)
    child.num_computed_tokens = 16
    kv.fork(parent, child, 16)
    assert kv.req_to_blocks["c"][:2] == [NULL_BLOCK, NULL_BLOCK]
    used = 12 - kv.pool.num_free_blocks
    assert used == 2  # blocks 2 and 3, shared
    assert kv.num_swap_out_blocks([parent, child]) == 2
    kv.swap_out([parent, child])
    assert kv.pool.num_free_blocks == 12 and kv.cpu_pool.num_free_blocks == 10
    kv.swap_in([parent, child])
    assert kv.req_to_blocks["p"][:2] == [NULL_BLOCK, NULL_BLOCK]
    assert kv.req_to_blocks["p"][2] is kv.req_to_blocks["c"][2]  # still shared
    assert kv.cpu_pool.num_free_blocks == 12 and kv.pool.num_free_blocks == 10
    for r in (parent, child):
        kv.free(r)
    assert kv.pool.num_free_blocks == 12


def test_mistral_window_swap_preemption_matches_hf(family_models):
    """Swap preemption of requests whose tables have holes: tokens still equal HF's."""
    from pagedserve import LLM
    from tests.runtime.model_factory import hf_greedy

    d = family_models["mistral_sw"]
    llm = LLM(d, dtype="float32", device="cpu", max_model_len=64, use_tqdm=False, block_size=4,
              num_gpu_blocks_override=10, max_num_batched_tokens=12, preemption_mode="swap", swap_space=0.001)
    ids = llm.get_tokenizer().encode("The quick brown fox jumps over the lazy dog because it was bored of "
                                     "waiting for the farmer to open the gate of the old barn near the river.")
    prompts = [ids[i:i + 22] for i in range(0, 8)]
    sp = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    for p, o in zip(prompts, outs):
        assert o.outputs[0].token_ids == hf_greedy(d, p, 10)[0]
    sched = llm.llm_engine.core.scheduler
    assert sched.num_preemptions_by_mode["swap"] > 0 and sched.kv.num_window_freed > 0
    assert sched.kv.pool.num_free_blocks == sched.kv.pool.num_blocks
