"""Structured output in the engine: each request's grammar matcher follows its accepted tokens,
also across a preemption by recompute (the replayed tokens are recomputed, not re-accepted), with
n > 1 children each on their own matcher; a bad token never reaches the output."""
from __future__ import annotations

import json

import pytest

from pagedserve import LLM, SamplingParams
from pagedserve.sampling_params import StructuredOutputsParams

pytest.importorskip("xgrammar")

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def llm():
    llm = LLM("default", device="cpu", max_model_len=512, use_tqdm=False)
    yield llm
    llm.shutdown()


def test_grammar_state_survives_recompute_preemption(llm):
    engine = llm.llm_engine
    sp = SamplingParams(temperature=0.9, seed=4, n=2, max_tokens=30,
                        structured_outputs=StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True))
    engine.add_request("r", "A person as JSON:", sp)
    sched = engine.core.scheduler
    outs, preempted, steps, done = [], 0, 0, set()
    while engine.has_unfinished_requests():
        outs += engine.step()
        steps += 1
        for req in list(sched.running):
            if req.grammar is not None:
                assert req.grammar.num_accepted == req.num_output_tokens  # in step with the tokens
            mark = (req.request_id, req.num_output_tokens)
            if req.num_output_tokens in (3, 8) and mark not in done:
                done.add(mark)
                assert sched.preempt_request(req.request_id, "recompute")
                preempted += 1
    assert preempted >= 2 and sched.num_preemptions_by_mode["recompute"] >= 2
    final = [o for o in outs if o.finished][-1]
    assert len(final.outputs) == 2
    for c in final.outputs:
        assert c.finish_reason == "stop", c
        obj = json.loads(c.text)
        assert set(obj) == {"name", "age"} and isinstance(obj["age"], int)


def test_compiled_grammars_are_cached(llm):
    so = StructuredOutputsParams(choice=["alpha", "beta"])
    mgr_before = llm.llm_engine.core.structured_output
    hits = mgr_before.num_cache_hits if mgr_before is not None else 0
    outs = llm.generate(["Pick:", "Choose one:"], SamplingParams(temperature=0, max_tokens=5, structured_outputs=so))
    assert {o.outputs[0].text for o in outs} <= {"alpha", "beta"}
    mgr = llm.llm_engine.core.structured_output
    assert mgr.num_cache_hits >= hits + 1  # the second request reused the first one's compiled grammar


def test_without_xgrammar_a_clear_error(monkeypatch):
    import sys

    from pagedserve.structured_output import MISSING_MESSAGE, is_available
    from pagedserve.structured_output.validate import check_spec

    monkeypatch.setitem(sys.modules, "xgrammar", None)  # as on a machine without the package
    assert not is_available()
    with pytest.raises(RuntimeError, match="needs the xgrammar package"):
        check_spec(StructuredOutputsParams(regex="a+"))
    assert "pip install 'pagedserve[structured]'" in MISSING_MESSAGE
