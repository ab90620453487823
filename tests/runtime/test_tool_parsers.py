"""Tool-call parsers and the streamed tool-call deltas, fed the text a model would write one
character at a time (the server feeds each detokenized delta the same way)."""
from __future__ import annotations

import json

import pytest

from pagedserve.entrypoints.openai.tool_parsers import get_tool_parser
from pagedserve.entrypoints.openai.tool_parsers.base import top_objects
from pagedserve.entrypoints.openai.tools import ToolPlan, ToolStream

ARGS1 = {"city": "Paris", "filter": {"name": "not a call", "q": "a } and a { in a string"}}
ARGS2 = {"city": "Oslo"}


def _stream(plan: ToolPlan, text: str) -> tuple[list[tuple[int, dict]], list[dict]]:
    """Feed ``text`` one character at a time: ([(characters fed when the delta came, delta)], finish deltas)."""
    ts, seen = ToolStream(plan), []
    for i, ch in enumerate(text):
        seen += [(i + 1, d) for d in ts.feed(ch)]
    return seen, ts.finish()


def _calls(deltas: list[dict]) -> tuple[str, list[dict]]:
    """Reassemble the content and the calls from deltas as an OpenAI client does."""
    content, calls = "", {}
    for d in deltas:
        content += d.get("content", "")
        for tc in d.get("tool_calls", []):
            c = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
            c["id"] = tc.get("id", c["id"])
            fn = tc.get("function", {})
            c["name"] += fn.get("name", "")
            c["arguments"] += fn.get("arguments") or ""
    return content, [calls[i] for i in sorted(calls)]


CASES = {
    "hermes": "Let me check. <tool_call>\n{\"name\": \"weather\", \"arguments\": %s}\n</tool_call>\n"
              "<tool_call>{\"name\": \"weather\", \"arguments\": %s}</tool_call>",
    "llama3_json": "<|python_tag|>{\"name\": \"weather\", \"parameters\": %s}; {\"name\": \"weather\", \"parameters\": %s}",
    "mistral": "[TOOL_CALLS][{\"name\": \"weather\", \"arguments\": %s}, {\"name\": \"weather\", \"arguments\": %s}]",
}


@pytest.mark.parametrize("parser", sorted(CASES))
def test_each_call_streams_as_soon_as_its_json_closes(parser):
    text = CASES[parser] % (json.dumps(ARGS1), json.dumps(ARGS2))
    plan = ToolPlan("auto", parser=get_tool_parser(parser))
    seen, tail = _stream(plan, text)
    content, calls = _calls([d for _, d in seen] + tail)
    assert [c["name"] for c in calls] == ["weather", "weather"]
    assert [json.loads(c["arguments"]) for c in calls] == [ARGS1, ARGS2]
    assert content.strip() == ("Let me check." if parser == "hermes" else "")
    # the first call went out before the second call's text was complete, and nothing was sent twice
    first = next(i for i, d in seen if "tool_calls" in d and d["tool_calls"][0]["index"] == 0)
    assert first < text.index(json.dumps(ARGS2)) + len(json.dumps(ARGS2))
    assert len({c["id"] for c in calls}) == 2 and not any("tool_calls" in d for d in tail)
    # the non-streamed extraction agrees
    c2, final = get_tool_parser(parser).extract(text)
    assert [(c.name, json.loads(c.arguments)) for c in final] == [("weather", ARGS1), ("weather", ARGS2)]


def test_mistral_name_args_format_with_and_without_call_ids():
    parser = get_tool_parser("mistral")
    text = f"[TOOL_CALLS]weather[ARGS]{json.dumps(ARGS1)}[TOOL_CALLS]weather[CALL_ID]a1B2c3D4e[ARGS]{json.dumps(ARGS2)}"
    content, calls = parser.extract(text)
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("weather", ARGS1), ("weather", ARGS2)]
    assert calls[1].id == "a1B2c3D4e"
    seen, tail = _stream(ToolPlan("auto", parser=parser), "Sure. " + text)
    content, streamed = _calls([d for _, d in seen] + tail)
    assert content == "Sure. " and [json.loads(c["arguments"]) for c in streamed] == [ARGS1, ARGS2]
    assert streamed[1]["id"] == "a1B2c3D4e"
    # a cut-off second call is not sent
    cut = text[:-3]
    seen, tail = _stream(ToolPlan("auto", parser=get_tool_parser("mistral")), cut)
    assert len(_calls([d for _, d in seen] + tail)[1]) == 1


def test_required_array_streams_items_and_respects_parallel_false():
    text = json.dumps([{"name": "weather", "parameters": ARGS1}, {"name": "time", "parameters": {}}])
    seen, tail = _stream(ToolPlan("required"), text)
    _, calls = _calls([d for _, d in seen] + tail)
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("weather", ARGS1), ("time", {})]
    assert any("tool_calls" in d for i, d in seen if i < len(text))  # before the array closed
    seen, tail = _stream(ToolPlan("auto", parser=get_tool_parser("hermes"), parallel=False),
                         CASES["hermes"] % (json.dumps(ARGS1), json.dumps(ARGS2)))
    assert len(_calls([d for _, d in seen] + tail)[1]) == 1


def test_plain_text_is_sent_as_content_and_a_partial_marker_is_held():
    plan = ToolPlan("auto", parser=get_tool_parser("hermes"))
    ts = ToolStream(plan)
    assert ts.feed("Hello <tool") == [{"content": "Hello "}]  # "<tool" may begin a marker
    assert ts.feed("s are fun") == [{"content": "<tools are fun"}]
    assert ts.finish() == [] and ts.num_calls == 0


def test_top_objects_ignores_braces_in_strings_and_nested_objects():
    text = '[{"a": {"b": 1}, "s": "}{"}, {"c": 2}, {"open": '
    spans = top_objects(text)
    assert [json.loads(text[s:e]) for s, e in spans] == [{"a": {"b": 1}, "s": "}{"}, {"c": 2}]
