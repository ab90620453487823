"""Automatic prefix caching: chained block hashes, cache hits (capped so one token is computed),
lazy LRU eviction, cache_salt isolation, per-request ``num_cached_tokens`` and hit counters — and
outputs identical with and without it (greedy and seeded sampling, roomy and tiny caches)."""
from __future__ import annotations

import pytest

from pagedserve import LLM, SamplingParams
from pagedserve.core.kv_cache_manager import KVCacheManager
from pagedserve.core.prefix_hash import ROOT_HASH, hash_block, update_block_hashes
from pagedserve.request import Request
from tests.runtime.model_factory import hf_greedy


def _req(rid: str, tokens: list[int], salt: str | None = None, **kw) -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=4, cache_salt=salt, **kw))


def test_block_hashes_are_chained_and_salted():
    a = _req("a", list(range(10)))
    b = _req("b", list(range(8)) + [99, 98])
    c = _req("c", [0] + list(range(1, 10)), salt="tenant-1")
    ha, hb, hc = (update_block_hashes(r, 4) for r in (a, b, c))
    assert len(ha) == 2  # full blocks only
    assert ha[0] == hash_block(ROOT_HASH, [0, 1, 2, 3]) and ha[1] == hash_block(ha[0], [4, 5, 6, 7])
    assert ha == hb  # the differing tokens sit in the partial third block
    assert hc[0] != ha[0] and hc[1] != ha[1]  # the salt of block 0 changes the whole chain
    b.append_output_token(5)
    b.append_output_token(6)
    assert update_block_hashes(b, 4)[2] == hash_block(ha[1], [99, 98, 5, 6])  # generated tokens extend it


def _run_prefill(kv: KVCacheManager, req: Request) -> None:
    hit = kv.get_computed_blocks(req)
    n = req.num_tokens - len(hit) * kv.block_size
    assert kv.allocate_slots(req, n, hit) is not None
    req.num_computed_tokens = req.num_tokens
    kv.cache_full_blocks(req)


def test_hits_capped_lazy_eviction_lru_order():
    kv = KVCacheManager(num_blocks=6, block_size=4, enable_caching=True)
    a = _req("a", list(range(12)))  # exactly 3 full blocks
    _run_prefill(kv, a)
    kv.free(a)
    assert kv.pool.num_free_blocks == 6 and len(kv.pool.cached) == 3  # freed but still cached
    # the same prompt hits 2 blocks, not 3: the last token must be computed for its logits
    assert len(kv.get_computed_blocks(_req("b", list(range(12))))) == 2
    assert len(kv.get_computed_blocks(_req("c", list(range(13))))) == 3
    # a different salt never hits
    assert kv.get_computed_blocks(_req("d", list(range(13)), salt="x")) == []
    # allocation takes never-cached blocks first, then the LRU cached ones; a's tail block goes first
    other = _req("e", list(range(100, 112)))
    kv.allocate_slots(other, 12)
    assert len(kv.pool.cached) == 3
    kv.allocate_slots(other, 16)
    assert len(kv.pool.cached) == 2 and len(kv.get_computed_blocks(_req("f", list(range(13))))) == 2
    # a hit must find room for the hit blocks (they leave the free queue) plus the new ones
    g = _req("g", list(range(13)))
    hit = kv.get_computed_blocks(g)
    assert kv.allocate_slots(g, 5, hit) is None and all(b.ref_cnt == 0 for b in hit)
    kv.free(other)
    assert kv.allocate_slots(g, 5, hit) is not None
    assert all(b.ref_cnt == 1 for b in hit) and kv.pool.num_free_blocks == 6 - 2 - 2
    assert kv.pool.reset_prefix_cache() == 0  # both still held


def _engine(model_dir: str, caching: bool, **kw) -> LLM:
    kw.setdefault("num_gpu_blocks_override", 512)
    return LLM(model_dir, dtype="float32", device="cpu", max_model_len=256, use_tqdm=False, block_size=4,
               enable_prefix_caching=caching, **kw)


SHARED = [(7 * i + 3) % 900 + 10 for i in range(37)]
SUFFIXES = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [5, 6, 7]]


@pytest.mark.parametrize("sampling", ["greedy", "seeded"])
def test_outputs_identical_with_and_without_prefix_caching(tiny_models, sampling):
    model = tiny_models["qwen2"]
    sp = (SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True) if sampling == "greedy"
          else SamplingParams(temperature=1.0, top_p=0.9, seed=11, max_tokens=8, ignore_eos=True))
    prompts = [{"prompt_token_ids": SHARED + s} for s in SUFFIXES]
    results = {}
    for caching in (False, True):
        llm = _engine(model, caching)
        first = llm.generate(prompts[:1], sp)  # warm the cache, then the rest share the prefix
        rest = llm.generate(prompts[1:], sp)
        results[caching] = [o.outputs[0].token_ids for o in first + rest]
        cached = [o.num_cached_tokens for o in first + rest]
        stats = llm.llm_engine.core.get_stats()
        if caching:
            assert cached[0] == 0 and all(c == 36 for c in cached[1:]), cached  # 9 full blocks of the prefix
            assert stats.prefix_cache_hits_total == 3 * 36 + 0
            assert stats.prefix_cache_queries_total == sum(len(p["prompt_token_ids"]) for p in prompts)
        else:
            assert cached == [0] * 4 and stats.prefix_cache_queries_total == 0
    assert results[True] == results[False]


def test_cache_salt_isolates(tiny_models):
    llm = _engine(tiny_models["llama"], True)
    sp = SamplingParams(temperature=0.0, max_tokens=2)
    llm.generate({"prompt_token_ids": SHARED, "cache_salt": "alice"}, sp)
    same = llm.generate({"prompt_token_ids": SHARED, "cache_salt": "alice"}, sp)[0]
    other = llm.generate({"prompt_token_ids": SHARED, "cache_salt": "bob"}, sp)[0]
    unsalted = llm.generate({"prompt_token_ids": SHARED}, sp)[0]
    assert same.num_cached_tokens == 36 and other.num_cached_tokens == 0 and unsalted.num_cached_tokens == 0
    assert same.outputs[0].token_ids == other.outputs[0].token_ids == unsalted.outputs[0].token_ids


def test_reset_prefix_cache_forgets_free_blocks(tiny_models):
    llm = _engine(tiny_models["llama"], True)
    sp = SamplingParams(temperature=0.0, max_tokens=2)
    first = llm.generate({"prompt_token_ids": SHARED}, sp)[0]
    assert llm.generate({"prompt_token_ids": SHARED}, sp)[0].num_cached_tokens == 36
    assert llm.reset_prefix_cache() >= 36 // 4  # every full block of the prompt was cached
    again = llm.generate({"prompt_token_ids": SHARED}, sp)[0]
    assert again.num_cached_tokens == 0 and again.outputs[0].token_ids == first.outputs[0].token_ids


def test_tiny_cache_with_prefix_caching_matches_hf(tiny_models):
    """Eviction, preemption and re-hits under a cache that holds ~2 requests: still HF's greedy tokens."""
    model = tiny_models["llama"]
    llm = _engine(model, True, num_gpu_blocks_override=22, max_num_batched_tokens=24)
    prompts = [SHARED[:30] + s for s in SUFFIXES] + [SHARED[:13], SHARED[:30] + [1]]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    sched = llm.llm_engine.core.scheduler
    assert sched.num_preemptions > 0 and sched.prefix_cache_hits > 0
    for p, o in zip(prompts, outs):
        assert o.outputs[0].token_ids == hf_greedy(model, p, 12)[0]
    assert sched.kv.pool.num_free_blocks == sched.kv.num_blocks


def test_prompt_logprobs_requests_skip_the_cache(tiny_models):
    llm = _engine(tiny_models["llama"], True)
    sp = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=1)
    a = llm.generate({"prompt_token_ids": SHARED}, sp)[0]
    b = llm.generate({"prompt_token_ids": SHARED}, sp)[0]
    assert b.num_cached_tokens == 0 and len(b.prompt_logprobs) == len(SHARED)
    def first(out):
        return [list(d)[0] if d else None for d in out.prompt_logprobs]

    assert first(a) == first(b)


# -- same-step sharing (model-free runner: it checks the KV every sequence reads) -------------------
def _fake_req(rid: str, prompt: list[int], max_tokens: int = 6, priority: int = 0, arrival: float = 0.0) -> Request:
    return Request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
                   arrival_time=arrival, priority=priority, max_tokens=max_tokens)


def test_requests_admitted_together_share_the_prefix_in_the_same_step():
    from tests.runtime.fake_runner import FakeConfig, FakeCore, assert_all_free

    core = FakeCore(FakeConfig(enable_prefix_caching=True, num_blocks=64, max_num_batched_tokens=256))
    prefix = list(range(1, 33))
    reqs = [_fake_req(f"r{i}", prefix + [40 + i, 41]) for i in range(4)]
    for r in reqs:
        core.add(r)
    seen = []
    schedule = core.scheduler.schedule
    core.scheduler.schedule = lambda: seen.append(schedule()) or seen[-1]
    core.step()
    assert [s.num_tokens for s in seen[0].scheduled] == [34, 2, 2, 2]  # the prefix is computed once
    assert [r.num_cached_tokens for r in reqs] == [0, 32, 32, 32]
    core.run()
    assert_all_free(core.scheduler)


def test_priority_victim_whose_new_blocks_were_just_shared_is_kept():
    """A running request that registers blocks this step, hit by a request admitted after it, is not
    preempted in that step (its computation would be cancelled under the hit)."""
    from tests.runtime.fake_runner import FakeConfig, FakeCore, assert_all_free

    core = FakeCore(FakeConfig(enable_prefix_caching=True, policy="priority", num_blocks=9, block_size=4,
                               max_num_batched_tokens=24, long_prefill_token_threshold=16))
    prompt = [(5 * i) % 29 + 1 for i in range(32)]
    core.add(_fake_req("victim", prompt, priority=9, arrival=0.0))
    core.step()  # victim: tokens 0..15
    core.add(_fake_req("hitter", prompt[:32] + [7, 7, 7], priority=1, arrival=1.0))
    core.add(_fake_req("big", [3] * 30, priority=2, arrival=2.0))
    core.step()  # victim: 16..31 (new blocks 4..7); hitter hits blocks 0..7; big cannot fit
    assert core.scheduled_log[-1] == ["victim", "hitter"] and core.scheduler.num_preemptions == 0
    core.run()
    assert_all_free(core.scheduler)
