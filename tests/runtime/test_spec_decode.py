"""Speculative decoding (n-gram) end to end on the CPU: greedy outputs identical to decoding without
it (the default model on prompts that invite copying; a tiny model under chunked prefill, prefix
caching and preemption), drafts accepted, logprobs of accepted tokens, stop strings and max_tokens
inside an accepted run, seeded sampling with n > 1, and no block leak after random aborts."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagedserve.engine.arg_utils import EngineArgs
from pagedserve.engine.llm_engine import LLMEngine
from pagedserve.entrypoints.llm import LLM
from pagedserve.sampling_params import SamplingParams
from tests.runtime.model_factory import make_tiny_model
from tests.runtime.test_block_accounting import check_invariants

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
COPY_PROMPTS = [
    "Repeat this list exactly: apple, banana, cherry, date, elderberry, fig, grape, honeydew. "
    "Repeat: apple, banana, cherry,",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\n# the same functions again:\n"
    "def add(a, b):\n",
]


def _stats(engine: LLMEngine):
    return engine.core.scheduler.get_stats()


def _pool_empty(engine: LLMEngine) -> bool:
    kv = engine.core.scheduler.kv
    return kv.pool.num_free_blocks == kv.num_blocks and not kv.req_to_blocks


# -- the default model --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_pair(smollm2_dir):
    kw = dict(device="cpu", max_model_len=512, kv_cache_memory=64 << 20, use_tqdm=False)
    plain = LLM(smollm2_dir, **kw)
    spec = LLM(smollm2_dir, speculative_config=NGRAM, **kw)
    yield plain, spec
    plain.shutdown()
    spec.shutdown()


def test_default_model_greedy_equals_plain_with_acceptance(smol_pair):
    plain, spec = smol_pair
    params = [SamplingParams(temperature=0.0, max_tokens=20),
              SamplingParams(temperature=0.0, max_tokens=16, logprobs=2),  # logprobs of accepted tokens
              SamplingParams(temperature=0.0, max_tokens=11),  # max_tokens inside an accepted run
              SamplingParams(temperature=0.0, max_tokens=8, repetition_penalty=1.2)]  # speculation off for it
    prompts = [COPY_PROMPTS[1], COPY_PROMPTS[0], COPY_PROMPTS[1], COPY_PROMPTS[0]]
    base = plain.generate(prompts, params, use_tqdm=False)
    before = _stats(spec.llm_engine)
    outs = spec.generate(prompts, params, use_tqdm=False)
    after = _stats(spec.llm_engine)
    for b, o in zip(base, outs):
        assert o.outputs[0].token_ids == b.outputs[0].token_ids
        assert o.outputs[0].text == b.outputs[0].text
    assert len(outs[2].outputs[0].token_ids) == 11
    drafted = after.spec_num_draft_tokens_total - before.spec_num_draft_tokens_total
    accepted = after.spec_num_accepted_tokens_total - before.spec_num_accepted_tokens_total
    assert drafted > 0 and accepted / drafted > 0.3, (accepted, drafted)  # copying: most drafts accepted
    assert sum(after.spec_num_accepted_tokens_per_pos_total) == after.spec_num_accepted_tokens_total
    lp_base, lp_spec = base[1].outputs[0].logprobs, outs[1].outputs[0].logprobs
    assert len(lp_spec) == len(lp_base) == 16
    for tok, d_base, d_spec in zip(outs[1].outputs[0].token_ids, lp_base, lp_spec):
        assert set(d_spec) == set(d_base) and d_spec[tok].rank == d_base[tok].rank == 1
        for t in d_base:
            assert abs(d_spec[t].logprob - d_base[t].logprob) < 1e-3
    assert abs(outs[1].outputs[0].cumulative_logprob - base[1].outputs[0].cumulative_logprob) < 1e-2
    assert _pool_empty(spec.llm_engine)


def test_default_model_stop_string_inside_an_accepted_run(smol_pair):
    plain, spec = smol_pair
    stop = " fig"  # the model copies " date, elderberry, fig, grape, ...": a stop string inside that run
    sp = SamplingParams(temperature=0.0, max_tokens=16, stop=[stop])
    want = plain.generate(COPY_PROMPTS[0], sp, use_tqdm=False)[0].outputs[0]
    got = spec.generate(COPY_PROMPTS[0], sp, use_tqdm=False)[0].outputs[0]
    assert got.finish_reason == want.finish_reason == "stop" and got.stop_reason == stop
    assert got.text == want.text and got.token_ids == want.token_ids
    assert _pool_empty(spec.llm_engine)


def test_default_model_seeded_sampling_n2_reproduces(smol_pair):
    """Temperature > 0 (rejection sampling), top-p, n = 2 children, seeds: the same run twice is
    identical, and copying still gets drafts accepted."""
    _, spec = smol_pair
    sp = SamplingParams(temperature=0.7, top_p=0.95, n=2, seed=5, max_tokens=10, ignore_eos=True)
    before = _stats(spec.llm_engine)
    first = spec.generate(COPY_PROMPTS[0], sp, use_tqdm=False)[0]
    again = spec.generate(COPY_PROMPTS[0], sp, use_tqdm=False)[0]
    after = _stats(spec.llm_engine)
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in again.outputs]
    assert len(first.outputs) == 2 and all(len(c.token_ids) == 10 for c in first.outputs)
    assert after.spec_num_accepted_tokens_total > before.spec_num_accepted_tokens_total
    assert _pool_empty(spec.llm_engine)


@pytest.mark.parametrize("layers, min_rate", [(None, 0.9), (4, 0.0)])
def test_draft_model_greedy_equals_plain(smol_pair, smollm2_dir, layers, min_rate):
    """method draft_model with the default model itself as the draft (it agrees with the target: nearly
    every draft accepted) and with a truncated-layer copy (hf_overrides num_hidden_layers); the draft's
    KV lives in the same pool, which is empty again at the end."""
    plain, _ = smol_pair
    cfg = {"method": "draft_model", "model": smollm2_dir, "num_speculative_tokens": 3}
    if layers is not None:
        cfg["hf_overrides"] = {"num_hidden_layers": layers}
    sp = [SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True),
          SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=1)]
    prompts = [COPY_PROMPTS[1], "The capital of France is"]
    want = plain.generate(prompts, sp, use_tqdm=False)
    with LLM(smollm2_dir, device="cpu", max_model_len=512, kv_cache_memory=64 << 20, use_tqdm=False,
             speculative_config=cfg) as spec:
        got = spec.generate(prompts, sp, use_tqdm=False)
        st = _stats(spec.llm_engine)
        assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in want]
        assert st.spec_num_draft_tokens_total > 0
        assert st.spec_num_accepted_tokens_total >= min_rate * st.spec_num_draft_tokens_total
        assert _pool_empty(spec.llm_engine)
        runner = spec.llm_engine.core.runner
        assert runner.kv_cache.shape[0] == 30 + (layers or 30)  # one pool: the target's and the draft's layers


# -- a tiny model: scheduling features ----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, smollm2_dir) -> str:
    return make_tiny_model(str(tmp_path_factory.mktemp("spec_tiny") / "llama"), "llama", smollm2_dir, seed=3)


def _tiny_engine(model: str, spec: dict | None, **kw) -> LLMEngine:
    args = EngineArgs(model=model, device="cpu", dtype="float32", speculative_config=spec,
                      **{"max_model_len": 256, **kw})
    return LLMEngine.from_engine_args(args, use_tqdm=False)


def _run(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]) -> dict[str, list[int]]:
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(f"q{i}", {"prompt_token_ids": p}, sp)
    done = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            if o.finished:
                done[o.request_id] = [c.token_ids for c in o.outputs]
    return done


def _copy_prompts(num: int) -> list[list[int]]:
    return [([100 + 7 * i + j for j in range(5 + i % 4)] * 4)[: 14 + 3 * i] for i in range(num)]


@pytest.mark.parametrize("method, mode", [("ngram", "recompute"), ("draft_model", "recompute"),
                                          ("draft_model", "swap")])
def test_greedy_equal_under_chunked_prefill_prefix_caching_and_preemption(tiny_llama, method, mode):
    """Small token budget (prefill chunks share steps with verify steps), a shared prefix, and too few
    blocks (preemption by recompute or swap; a draft model's KV is recomputed or swapped with the
    target's): same greedy tokens as without speculation. The draft model is the tiny model itself."""
    kw = dict(block_size=4, num_gpu_blocks_override=24, max_num_batched_tokens=16, max_num_seqs=6,
              enable_prefix_caching=True, preemption_mode=mode)
    prompts = _copy_prompts(6)
    prompts[5] = prompts[4][:12] + prompts[5]  # shares full blocks with prompts[4]
    params = [SamplingParams(temperature=0.0, max_tokens=20 + 3 * i, ignore_eos=True) for i in range(6)]
    cfg = NGRAM if method == "ngram" else {"method": "draft_model", "model": tiny_llama, "num_speculative_tokens": 3}
    plain, spec = _tiny_engine(tiny_llama, None, **kw), _tiny_engine(tiny_llama, cfg, **kw)
    want, got = _run(plain, prompts, params), _run(spec, prompts, params)
    assert got == want
    st = _stats(spec)
    assert st.spec_num_drafts_total > 0 and st.num_preemptions_total > 0 and st.prefix_cache_hits_total > 0
    if method == "draft_model":  # the target as its own draft: (nearly) every draft accepted
        assert st.spec_num_accepted_tokens_total >= 0.9 * st.spec_num_draft_tokens_total
    if mode == "swap":
        assert st.num_preemptions_swap_total > 0
    assert _pool_empty(spec)


NUM_BLOCKS = 12
ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 7), st.integers(1, 12), st.integers(1, 2), st.booleans()),
    st.tuples(st.just("abort"), st.integers(0, 20)),
    st.tuples(st.just("step"), st.integers(1, 4)),
), min_size=1, max_size=25)


@pytest.fixture(scope="module")
def leak_engine(tiny_llama) -> LLMEngine:
    return _tiny_engine(tiny_llama, {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2},
                        block_size=4, num_gpu_blocks_override=NUM_BLOCKS, max_num_batched_tokens=16,
                        max_num_seqs=4, max_model_len=128)


@pytest.fixture(scope="module")
def leak_engine_draft(tiny_llama) -> LLMEngine:
    return _tiny_engine(tiny_llama, {"method": "draft_model", "model": tiny_llama, "num_speculative_tokens": 3},
                        block_size=4, num_gpu_blocks_override=NUM_BLOCKS, max_num_batched_tokens=16,
                        max_num_seqs=4, max_model_len=128)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops)
def test_random_add_abort_step_never_leaks_with_drafts(leak_engine, ops):
    _random_ops(leak_engine, ops)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops)
def test_random_add_abort_step_never_leaks_with_a_draft_model(leak_engine_draft, ops):
    _random_ops(leak_engine_draft, ops)


def _random_ops(engine: LLMEngine, ops: list) -> None:
    prompts = _copy_prompts(8)
    added: list[str] = []
    for op in ops:
        if op[0] == "add":
            _, which, max_tokens, n, greedy = op
            rid = f"r{len(added)}-{id(ops)}"
            engine.add_request(rid, prompts[which], SamplingParams(temperature=0.0 if greedy else 1.0, n=n,
                                                                   max_tokens=max_tokens, ignore_eos=True))
            added.append(rid)
        elif op[0] == "abort" and added:
            engine.abort_request(added[op[1] % len(added)])
        else:
            for _ in range(op[1]):
                engine.step()
                check_invariants(engine)
    for _ in range(400):
        if not engine.has_unfinished_requests():
            break
        engine.step()
        check_invariants(engine)
    assert not engine.has_unfinished_requests()
    assert _pool_empty(engine)
