"""No block leaks: after any random interleaving of add / abort / step, every block is free,
and at every step reference counts and free lists agree."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagedserve.engine.arg_utils import EngineArgs
from pagedserve.engine.llm_engine import LLMEngine
from pagedserve.sampling_params import SamplingParams

NUM_BLOCKS = 12


@pytest.fixture(scope="module")
def engine(tiny_models) -> LLMEngine:
    args = EngineArgs(model=tiny_models["llama"], device="cpu", dtype="float32", block_size=4,
                      num_gpu_blocks_override=NUM_BLOCKS, max_num_batched_tokens=16, max_num_seqs=4,
                      max_model_len=128)
    return LLMEngine.from_engine_args(args, use_tqdm=False)


def check_invariants(engine: LLMEngine) -> None:
    sched = engine.core.scheduler
    pool = sched.kv.pool
    owned: dict[int, int] = {}
    for blocks in sched.kv.req_to_blocks.values():
        for b in blocks:
            owned[b.block_id] = owned.get(b.block_id, 0) + 1
    for b in pool.blocks:
        assert b.ref_cnt == owned.get(b.block_id, 0), f"block {b.block_id}: ref_cnt {b.ref_cnt}"
        assert (b.block_id in pool.free_queue) == (b.ref_cnt == 0)
    for rid in sched.kv.req_to_blocks:
        assert rid in sched.requests, f"blocks held by unknown request {rid}"


ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 30), st.integers(1, 12), st.integers(1, 2)),
    st.tuples(st.just("abort"), st.integers(0, 20)),
    st.tuples(st.just("step"), st.integers(1, 4)),
), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops)
def test_random_add_abort_step_never_leaks(engine, ops):
    added: list[str] = []
    for op in ops:
        if op[0] == "add":
            _, plen, max_tokens, n = op
            rid = f"r{len(added)}-{id(ops)}"
            engine.add_request(rid, list(range(5, 5 + plen)),
                               SamplingParams(temperature=1.0, n=n, max_tokens=max_tokens, ignore_eos=True))
            added.append(rid)
        elif op[0] == "abort" and added:
            engine.abort_request(added[op[1] % len(added)])
        elif op[0] == "step":
            for _ in range(op[1]):
                engine.step()
                check_invariants(engine)
    for _ in range(400):  # drain: every request finishes (or the test fails)
        if not engine.has_unfinished_requests():
            break
        engine.step()
        check_invariants(engine)
    assert not engine.has_unfinished_requests()
    pool = engine.core.scheduler.kv.pool
    assert pool.num_free_blocks == NUM_BLOCKS and all(b.ref_cnt == 0 for b in pool.blocks)
