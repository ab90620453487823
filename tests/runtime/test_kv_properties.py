"""Property tests (hypothesis) over the real scheduler, KV cache manager and block ops, with a
model-free runner (tests/runtime/fake_runner.py) that checks the KV content each sequence reads.

Random interleavings of add (plain, n > 1 forks, beam groups; shared prefixes; priorities) / abort /
step / forced preemption (recompute or swap) never leak a block (GPU or CPU pool), never double-free,
keep reference counts exact, never let a sequence read KV that is not its own — and every request that
was not aborted produces exactly the tokens it produces alone in a huge cache.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagedserve.engine.llm_engine import InputProcessor
from pagedserve.request import Request
from pagedserve.sampling_params import SamplingParams
from tests.runtime.fake_runner import FakeConfig, FakeCore, assert_all_free, check_invariants

EOS = 3
PREFIXES = [[], [11, 12, 13, 14, 15, 16, 17, 18], [11, 12, 13, 14, 15, 16, 17, 19, 20]]


def make_requests(rid: str, op: tuple, arrival: float) -> list[Request]:
    _, plen, max_tokens, n, beam, prefix, priority, seeded, ignore_eos = op
    prompt = PREFIXES[prefix] + [(int(rid[1:]) * 7 + i * 5) % 37 + 1 for i in range(plen)]
    if beam:
        sp = SamplingParams(n=min(n, beam), beam_width=beam, use_beam_search=True, temperature=0.0,
                            max_tokens=max_tokens, ignore_eos=ignore_eos, length_penalty=0.5 + beam / 4,
                            early_stopping=[False, True, "never"][plen % 3])
    else:
        sp = SamplingParams(n=n, temperature=0.0 if not seeded else 1.0, seed=7 if seeded else None,
                            max_tokens=max_tokens, ignore_eos=ignore_eos)
    return [Request(cid, prompt, cp, eos_token_ids=[EOS], arrival_time=arrival, priority=priority,
                    max_tokens=max_tokens)
            for cid, cp in InputProcessor.child_params(rid, sp).items()]


add_op = st.tuples(st.just("add"), st.integers(1, 14), st.integers(1, 10), st.integers(1, 3),
                   st.sampled_from([0, 0, 0, 2, 3]), st.integers(0, 2), st.integers(0, 2), st.booleans(),
                   st.booleans())
ops_strategy = st.lists(st.one_of(
    add_op,
    st.tuples(st.just("abort"), st.integers(0, 30)),
    st.tuples(st.just("step"), st.integers(1, 5)),
    st.tuples(st.just("preempt"), st.integers(0, 30), st.sampled_from(["recompute", "swap"])),
), min_size=1, max_size=30)

CONFIGS = {
    "recompute": FakeConfig(),
    "swap": FakeConfig(num_cpu_blocks=40, preemption_mode="swap"),
    "auto+prefix": FakeConfig(num_cpu_blocks=12, preemption_mode="auto", enable_prefix_caching=True),
    "priority+swap+prefix": FakeConfig(num_cpu_blocks=40, preemption_mode="swap", enable_prefix_caching=True,
                                       policy="priority", priority_aging_interval=0.5),
    "tiny+prefix": FakeConfig(num_blocks=14, max_num_batched_tokens=7, enable_prefix_caching=True,
                              long_prefill_token_threshold=5),
    # every layer windowed: blocks left of the window freed (holes through forks, beams, swap, prefix hits)
    "window+swap+prefix": FakeConfig(num_blocks=16, num_cpu_blocks=40, preemption_mode="swap",
                                     enable_prefix_caching=True, sliding_window=6, max_num_batched_tokens=7),
    "window+recompute": FakeConfig(num_blocks=14, sliding_window=5, max_num_batched_tokens=9),
}


def reference_outputs(reqs: list[Request]) -> dict[str, list[int]]:
    core = FakeCore(FakeConfig(num_blocks=4000, max_num_seqs=256, max_num_batched_tokens=4096))
    for r in reqs:
        core.add(Request(r.request_id, r.prompt_token_ids, r.sampling_params, eos_token_ids=[EOS],
                         arrival_time=r.arrival_time, priority=r.priority, max_tokens=r.max_tokens))
    return {rid: o.new_token_ids for rid, o in core.run().items()}


@pytest.mark.parametrize("name", list(CONFIGS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops_strategy)
def test_random_interleavings_keep_blocks_exact(name, ops):
    core = FakeCore(CONFIGS[name])
    sched = core.scheduler
    added: list[list[Request]] = []
    aborted: set[str] = set()
    outputs: dict[str, list[int]] = {}

    def collect(outs):
        for o in outs:
            outputs.setdefault(o.request_id, []).extend(o.new_token_ids)

    for op in ops:
        if op[0] == "add":
            reqs = make_requests(f"r{len(added)}", op, arrival=float(len(added)))
            try:
                for r in reqs:
                    core.add(r)
            except ValueError:  # a beam group that could outgrow this tiny cache is rejected up front
                sched.finish_requests([r.request_id for r in reqs], r.status.FINISHED_ABORTED)
                aborted.update(r.request_id for r in reqs)
            added.append(reqs)
        elif op[0] == "abort" and added:
            reqs = added[op[1] % len(added)]
            sched.finish_requests([r.request_id for r in reqs], reqs[0].status.FINISHED_ABORTED)
            aborted.update(r.request_id for r in reqs)
        elif op[0] == "step":
            for _ in range(op[1]):
                collect(core.step())
                check_invariants(sched)
        elif op[0] == "preempt" and sched.running:
            sched.preempt_request(sched.running[op[1] % len(sched.running)].request_id, op[2])
            check_invariants(sched)
    for _ in range(3000):
        if not sched.has_unfinished_requests():
            break
        collect(core.step())
        check_invariants(sched)
    assert not sched.has_unfinished_requests()
    assert_all_free(sched)
    every = [r for reqs in added for r in reqs if r.request_id not in aborted]
    ref = reference_outputs(every)
    for r in every:
        assert outputs.get(r.request_id, []) == ref[r.request_id], r.request_id
