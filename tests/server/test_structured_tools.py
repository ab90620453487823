"""Structured output (xgrammar) and tool calling through the real `openai` client against a real
server (SmolLM2, hermes tool parser), plus vLLM's other request fields: logit_bias,
allowed_token_ids, bad_words, best_of, truncate_prompt_tokens, prompt_logprobs, echo, suffix."""
from __future__ import annotations

import json
import re

import openai
import pytest
from pydantic import BaseModel

from tests.server.conftest import MODEL_NAME, start_server
from tests.server.server_proc import post, sse_events

pytest.importorskip("xgrammar")

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string", "maxLength": 12}}, "required": ["zone"]}}}]
FORCED_CALL = r'<tool_call>\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}</tool_call>'


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = start_server(tmp_path_factory, "tools", ["--max-num-seqs", "8", "--enable-auto-tool-choice",
                                                  "--tool-call-parser", "hermes"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)


class City(BaseModel):
    name: str
    country: str


# -- structured output ---------------------------------------------------------------------------
def test_parse_with_a_pydantic_model(client):
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    r = parse(model=MODEL_NAME, response_format=City, max_tokens=40, temperature=0,
              messages=[{"role": "user", "content": "Give the capital of France as JSON with name and country."}])
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "stop" and isinstance(msg.parsed, City), msg
    assert msg.parsed.name


def test_json_schema_n2_and_streaming(client):
    schema = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["answer"],
              "additionalProperties": False}
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}
    r = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "2+2? JSON."}],
                                       n=2, temperature=1.0, seed=3, max_tokens=24, extra_body={
                                           "structured_outputs": {"json": schema, "disable_any_whitespace": True}})
    for c in r.choices:
        assert c.finish_reason == "stop" and isinstance(json.loads(c.message.content)["answer"], int), c
    s = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "2+2? JSON."}],
                                       response_format=rf, temperature=0, max_tokens=20, stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)
    assert set(json.loads(text)) == {"answer"}


def test_vllm_fields_and_legacy_guided(srv):
    cases = [({"structured_outputs": {"choice": ["yes", "no"]}}, lambda t: t in ("yes", "no")),
             ({"guided_choice": ["red", "green"]}, lambda t: t in ("red", "green")),
             ({"structured_outputs": {"regex": r"[a-z]{2,6}@example\.com"}},
              lambda t: re.fullmatch(r"[a-z]{2,6}@example\.com", t)),
             ({"guided_regex": r"\d{3}"}, lambda t: re.fullmatch(r"\d{3}", t)),
             ({"structured_outputs": {"grammar": 'root ::= "A" | "B" "!"'}}, lambda t: t in ("A", "B!")),
             ]
    for extra, ok in cases:
        status, body = post(srv, COMP, {"prompt": "Answer:", "max_tokens": 12, "temperature": 0, **extra})
        assert status == 200, (extra, body)
        text = body["choices"][0]["text"]
        assert ok(text) and body["choices"][0]["finish_reason"] == "stop", (extra, text)
    status, body = post(srv, COMP, {"prompt": "Answer:", "max_tokens": 4, "temperature": 0,
                                    "response_format": {"type": "json_object"}})
    assert status == 200 and body["choices"][0]["text"].startswith("{"), body  # an object, cut by max_tokens
    status, body = post(srv, COMP, {"prompt": "Answer:", "max_tokens": 4, "temperature": 0, "guided_decoding_backend":
                                    "xgrammar", "guided_json": {"type": "array", "items": {"type": "boolean"}}})
    assert status == 200 and body["choices"][0]["text"].startswith("["), body


def test_bad_specs_are_400_naming_the_field(srv):
    for extra, param in (({"guided_regex": "(("}, "guided_regex"),
                         ({"structured_outputs": {"grammar": "root ::= "}}, "structured_outputs"),
                         ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                             "type": "nonsense"}}}}, "response_format.json_schema.schema"),
                         ({"guided_json": "{not json"}, "guided_json"),
                         ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
                         ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs")):
        status, body = post(srv, COMP, {"prompt": "x", "max_tokens": 1, **extra})
        assert status == 400 and body["error"]["param"] == param, (extra, body)


# -- tool calling --------------------------------------------------------------------------------
def test_named_tool_choice_streams_arguments(client):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice=choice,
                                       max_tokens=25, temperature=0)
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and set(json.loads(call.function.arguments)) == {"city"}
    s = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice=choice,
                                       max_tokens=25, temperature=0, stream=True)
    deltas = [ch.choices[0].delta for ch in s if ch.choices]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert calls[0].id and calls[0].function.name == "get_weather" and calls[0].type == "function"
    assert len(calls) > 2  # the arguments arrive in several deltas, as OpenAI streams them
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == json.loads(call.function.arguments)


def test_required_tool_choice_and_parallel_calls(client):
    for parallel in (True, False):
        r = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=parallel, max_tokens=60, temperature=0)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.tool_calls, c
        assert all(t.function.name in ("get_weather", "get_time") for t in c.message.tool_calls)
        assert parallel or len(c.message.tool_calls) == 1
        for t in c.message.tool_calls:
            json.loads(t.function.arguments)
    s = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice="required",
                                       max_tokens=60, temperature=0, stream=True)
    chunks = [ch for ch in s if ch.choices]
    calls = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name in ("get_weather", "get_time") and calls[0].id
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_tool_choice_hermes_parser(client):
    # the small model does not call tools by itself: a regex makes it write a hermes call, which the
    # --tool-call-parser must find (non-streamed and streamed)
    extra = {"structured_outputs": {"regex": r"Let me check\. " + FORCED_CALL}}
    r = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, max_tokens=80, temperature=0,
                                       extra_body=extra)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content == "Let me check.", c
    assert c.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(c.message.tool_calls[0].function.arguments) == {"city": "Paris"}
    s = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, max_tokens=80, temperature=0,
                                       extra_body=extra, stream=True)
    chunks = [ch for ch in s if ch.choices]
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    calls = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
    assert content.strip() == "Let me check." and "<tool_call>" not in content
    assert calls[0].function.name == "get_weather" and calls[0].index == 0
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_messages_round_trip_and_errors(srv, client):
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]
    r = client.chat.completions.create(model=MODEL_NAME, messages=history, tools=TOOLS, tool_choice="none",
                                       max_tokens=5, temperature=0)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls
    for extra, param in (({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                          "tool_choice.function.name"),
                         ({"tool_choice": "required"}, "tool_choice"),
                         ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
                          "tool_choice")):
        status, body = post(srv, CHAT, {"messages": ASK, "max_tokens": 1, **extra})
        assert status == 400 and body["error"]["param"] == param, (extra, body)


# -- other request fields ------------------------------------------------------------------------
def _tok(srv, text: str) -> list[int]:
    return post(srv, "/tokenize", {"prompt": text, "add_special_tokens": False})[1]["tokens"]


def test_logit_bias_allowed_token_ids_bad_words(srv):
    x = _tok(srv, " zebra")[0]
    status, body = post(srv, COMP, {"prompt": "Hello", "max_tokens": 3, "temperature": 0,
                                    "logit_bias": {str(x): 100}, "logprobs": 0})
    assert status == 200 and body["choices"][0]["text"] == " zebra" * 3, body
    allowed = _tok(srv, " yes no maybe")
    status, body = post(srv, COMP, {"prompt": "Hello", "max_tokens": 4, "temperature": 1.0, "seed": 1,
                                    "allowed_token_ids": allowed, "ignore_eos": True})
    assert status == 200 and set(_tok(srv, body["choices"][0]["text"])) <= set(allowed), body
    status, ref = post(srv, COMP, {"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0})
    word = ref["choices"][0]["text"].split()[0]
    status, body = post(srv, COMP, {"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0,
                                    "bad_words": [word]})
    assert status == 200 and word not in body["choices"][0]["text"], (word, body)


def test_best_of_truncate_echo_suffix(srv):
    status, body = post(srv, COMP, {"prompt": "Say something:", "max_tokens": 3, "n": 1, "best_of": 3,
                                    "temperature": 1.0, "seed": 5})
    assert status == 200 and len(body["choices"]) == 1 and body["choices"][0]["logprobs"] is None, body
    assert body["usage"]["completion_tokens"] == 3  # three were sampled; the returned one is counted
    status, body = post(srv, COMP, {"prompt": "one two three four five six seven", "max_tokens": 1,
                                    "truncate_prompt_tokens": 3, "echo": True})
    assert status == 200 and body["usage"]["prompt_tokens"] == 3, body
    assert body["choices"][0]["text"].startswith(" five six seven")
    status, body = post(srv, CHAT, {"messages": ASK + [{"role": "assistant", "content": "It is"}], "echo": True,
                                    "add_generation_prompt": False, "continue_final_message": True,
                                    "max_tokens": 2})
    assert status == 200 and body["choices"][0]["message"]["content"].startswith("It is"), body
    status, body = post(srv, COMP, {"prompt": "def f(", "suffix": "return x", "max_tokens": 1})
    assert status == 400 and body["error"]["param"] == "suffix" and "fill-in-the-middle" in body["error"]["message"]


def test_prompt_logprobs_shape(srv):
    status, body = post(srv, COMP, {"prompt": "The sky is blue", "max_tokens": 1, "prompt_logprobs": 1})
    plp = body["choices"][0]["prompt_logprobs"]
    n = body["usage"]["prompt_tokens"]
    assert status == 200 and len(plp) == n and plp[0] is None, body
    ids = _tok(srv, "The sky is blue")
    for tid, entry in zip(ids[1:], plp[1:]):
        assert str(tid) in entry and 1 <= len(entry) <= 2
        assert set(entry[str(tid)]) == {"logprob", "rank", "decoded_token"}
    status, text = post(srv, COMP, {"prompt": "The sky is blue", "max_tokens": 1, "prompt_logprobs": 1,
                                    "stream": True})
    firsts = [e for e in sse_events(text) if e != "[DONE]" and "prompt_logprobs" in e["choices"][0]]
    assert len(firsts) == 1 and firsts[0]["choices"][0]["prompt_logprobs"] == plp  # streamed: the first chunk
    status, body = post(srv, CHAT, {"messages": ASK, "max_tokens": 1, "prompt_logprobs": 0})
    plp = body["prompt_logprobs"]
    assert status == 200 and len(plp) == body["usage"]["prompt_tokens"] and plp[0] is None
    assert all(len(e) == 1 for e in plp[1:])
