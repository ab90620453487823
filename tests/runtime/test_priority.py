"""Priority scheduling: lower value first (FCFS among equals), a waiting high-priority request
preempts running lower-priority ones under memory pressure, and aging bounds starvation."""
from __future__ import annotations

import pytest

from pagedserve import LLM, SamplingParams
from pagedserve.core.request_queue import PriorityQueue, priority_key
from pagedserve.request import Request
from tests.runtime.fake_runner import FakeConfig, FakeCore, assert_all_free


def _req(rid: str, priority: int, arrival: float, plen: int = 6, max_tokens: int = 4) -> Request:
    return Request(rid, [(hash(rid) + i) % 30 + 1 for i in range(plen)],
                   SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
                   arrival_time=arrival, priority=priority, max_tokens=max_tokens)


def _first_scheduled(core: FakeCore) -> list[str]:
    order: list[str] = []
    for step in core.scheduled_log:
        for rid in step:
            if rid not in order:
                order.append(rid)
    return order


def test_priority_order_under_contention():
    core = FakeCore(FakeConfig(policy="priority", max_num_seqs=1))
    for rid, prio, arrival in [("a", 3, 0.0), ("b", 1, 0.1), ("c", 2, 0.2), ("d", 1, 0.05), ("e", 0, 0.3)]:
        core.add(_req(rid, prio, arrival))
    core.run()
    assert _first_scheduled(core) == ["e", "d", "b", "c", "a"]  # priority, then arrival


def test_fcfs_ignores_priority():
    core = FakeCore(FakeConfig(policy="fcfs", max_num_seqs=1))
    for rid, prio in [("a", 3), ("b", 1), ("c", 0)]:
        core.add(_req(rid, prio, 0.0))
    core.run()
    assert _first_scheduled(core) == ["a", "b", "c"]


@pytest.mark.parametrize("mode,cpu", [("recompute", 0), ("swap", 64)])
def test_high_priority_preempts_lower_priority_under_memory_pressure(mode, cpu):
    core = FakeCore(FakeConfig(policy="priority", num_blocks=12, block_size=4, num_cpu_blocks=cpu,
                               preemption_mode=mode, max_num_seqs=8))
    core.add(_req("low1", 5, 0.0, plen=16, max_tokens=20))
    core.add(_req("low2", 5, 0.1, plen=12, max_tokens=20))
    for _ in range(3):
        core.step()
    assert {r.request_id for r in core.scheduler.running} == {"low1", "low2"}
    core.add(_req("high", 0, 0.2, plen=16, max_tokens=4))
    core.step()
    running = {r.request_id for r in core.scheduler.running}
    assert "high" in running and "low2" not in running  # the worst-key running request made room
    assert core.scheduler.num_preemptions_by_mode[mode] >= 1
    out = core.run()
    assert set(out) == {"low1", "low2", "high"}
    assert_all_free(core.scheduler)


def test_equal_priority_does_not_preempt():
    core = FakeCore(FakeConfig(policy="priority", num_blocks=7, block_size=4))
    core.add(_req("a", 1, 0.0, plen=16, max_tokens=12))
    core.step()
    core.add(_req("b", 1, 0.1, plen=16, max_tokens=4))
    core.step()
    assert [r.request_id for r in core.scheduler.running] == ["a"]
    assert core.scheduler.num_preemptions == 0


def _starve(aging: float) -> tuple[list[str], Request]:
    """One low-priority request, then a stream of high-priority ones arriving 1 s apart."""
    core = FakeCore(FakeConfig(policy="priority", max_num_seqs=1, priority_aging_interval=aging))
    low = _req("low", 4, 0.0)
    core.add(_req("h0", 0, 0.0))
    core.add(low)
    t = 1.0
    for i in range(1, 40):  # keep the queue non-empty with newer high-priority arrivals
        core.add(_req(f"h{i}", 0, t))
        t += 1.0
    core.run()
    return _first_scheduled(core), low


def test_aging_bounds_starvation():
    """With aging interval I, a priority-4 request is ahead of every priority-0 request that arrives more
    than 4·I seconds after it, so it cannot be starved by an endless stream of them."""
    order, low = _starve(aging=2.0)
    pos = order.index("low")
    overtaken_by = [rid for rid in order[:pos] if rid.startswith("h")]
    assert all(int(rid[1:]) * 1.0 <= 4 * 2.0 for rid in overtaken_by), overtaken_by
    assert 0 < pos < 12
    order, _ = _starve(aging=0.0)  # no aging: strict priority, the low request goes last
    assert order[-1] == "low"


def test_priority_key_is_aging_as_a_static_deadline():
    q = PriorityQueue()
    reqs = [_req("old-low", 3, 0.0), _req("new-high", 0, 25.0), _req("newer-high", 0, 35.0)]
    for i, r in enumerate(reqs):
        r.sort_key = priority_key(r, 10.0, i)
        q.push(r)
    # old-low's key 30 sits between the high-priority requests arriving at 25 s and 35 s
    assert [r.request_id for r in q] == ["new-high", "old-low", "newer-high"]
    q.remove(reqs[0])
    assert [r.request_id for r in q] == ["new-high", "newer-high"]


def test_llm_generate_priority_reaches_the_scheduler(tiny_models):
    llm = LLM(tiny_models["llama"], dtype="float32", device="cpu", max_model_len=64, use_tqdm=False,
              num_gpu_blocks_override=64, scheduling_policy="priority", max_num_seqs=1)
    seen: list[str] = []
    sched = llm.llm_engine.core.scheduler
    orig = sched.schedule

    def spy():
        out = orig()
        seen.extend(s.request.request_id for s in out.scheduled if s.request.request_id not in seen)
        return out

    sched.schedule = spy
    outs = llm.generate([[5, 6, 7], [8, 9], [10, 11, 12]], SamplingParams(temperature=0.0, max_tokens=2),
                        priority=[2, 0, 1])
    assert len(outs) == 3
    assert seen == [outs[1].request_id, outs[2].request_id, outs[0].request_id]
