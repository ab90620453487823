"""Bad requests get the right 4xx and an OpenAI error body naming the field."""
from __future__ import annotations

import json

import pytest

from tests.server.server_proc import post, request

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MSG = [{"role": "user", "content": "hi"}]
LONG_TEXT = "hello " * 700  # > max_model_len=512 tokens

# (path, body, status, param or None, words the message must contain)
CASES = [
    # wrong types
    (COMP, {"prompt": "hi", "temperature": "hot"}, 400, "temperature", ["number"]),
    (COMP, {"prompt": "hi", "max_tokens": 2.5}, 400, "max_tokens", ["integer"]),
    (COMP, {"prompt": "hi", "n": True}, 400, "n", ["integer"]),
    (COMP, {"prompt": 42}, 400, "prompt", []),
    (COMP, {"prompt": [1, "a"]}, 400, "prompt[1]", ["integer"]),
    (COMP, {"prompt": "hi", "stop": [1]}, 400, "stop[0]", ["string"]),
    (COMP, {"prompt": "hi", "stream": "yes"}, 400, "stream", ["boolean"]),
    (CHAT, {"messages": "hi"}, 400, "messages", ["array"]),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", []),
    (CHAT, {"messages": MSG, "logprobs": 3}, 400, "logprobs", ["boolean"]),
    # out of range
    (COMP, {"prompt": "hi", "temperature": -0.5}, 400, "temperature", [">="]),
    (COMP, {"prompt": "hi", "top_p": 0}, 400, "top_p", [">"]),
    (COMP, {"prompt": "hi", "top_p": 1.5}, 400, "top_p", ["<="]),
    (COMP, {"prompt": "hi", "n": 0}, 400, "n", []),
    (COMP, {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens", []),
    (COMP, {"prompt": "hi", "presence_penalty": 3}, 400, "presence_penalty", []),
    (COMP, {"prompt": "hi", "logprobs": 21}, 400, "logprobs", []),
    (COMP, {"prompt": "hi", "top_k": -2}, 400, "top_k", []),
    (COMP, {"prompt": "hi", "seed": 2**70}, 400, "seed", []),
    (COMP, {"prompt": "hi", "min_tokens": 5, "max_tokens": 2}, 400, "min_tokens", ["max_tokens"]),
    (COMP, {"prompt": "hi", "n": 3, "best_of": 2}, 400, "best_of", [">= n"]),
    (COMP, {"prompt": "hi", "best_of": 3, "stream": True}, 400, "best_of", ["streamed"]),
    (COMP, {"prompt": "hi", "stop": [""]}, 400, "stop", []),
    (CHAT, {"messages": MSG, "top_logprobs": 2}, 400, "top_logprobs", ["logprobs"]),
    (CHAT, {"messages": MSG, "max_completion_tokens": -1}, 400, "max_completion_tokens", []),
    # unknown fields
    (COMP, {"prompt": "hi", "foo": 1}, 400, "foo", ["Unrecognized"]),
    (CHAT, {"messages": MSG, "max_token": 5}, 400, "max_token", ["Unrecognized"]),
    (CHAT, {"messages": [{"role": "user", "content": "hi", "extra": 1}]}, 400, "messages[0].extra", []),
    # prompts: too long, empty, bad token ids
    (COMP, {"prompt": LONG_TEXT, "max_tokens": 1}, 400, "prompt", ["context length"]),
    (COMP, {"prompt": "a " * 300, "max_tokens": 400}, 400, "max_tokens", ["context length"]),
    (CHAT, {"messages": [{"role": "user", "content": LONG_TEXT}]}, 400, "messages", ["context length"]),
    (COMP, {"prompt": "", "max_tokens": 1}, 400, "prompt", ["empty"]),
    (COMP, {"prompt": [], "max_tokens": 1}, 400, "prompt", []),
    (COMP, {"prompt": [999999999]}, 400, "prompt", ["vocabulary"]),
    (COMP, {"prompt": [-1]}, 400, "prompt[0]", [">= 0"]),
    (COMP, {"prompt": "\ud800 lone surrogate"}, 400, "prompt", []),
    # messages
    (CHAT, {"messages": []}, 400, "messages", ["at least 1"]),
    (CHAT, {}, 400, "messages", ["required"]),
    (COMP, {}, 400, "prompt", ["required"]),
    (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", []),
    (CHAT, {"messages": [{"content": "hi"}]}, 400, "messages[0].role", ["required"]),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "messages[0].content[0]", []),
    (CHAT, {"messages": [{"role": "user", "content": None}]}, 400, "messages[0].content", []),
    # features not built / options that need server flags
    (COMP, {"prompt": "hi", "use_beam_search": True, "stream": True}, 400, "stream", ["beam"]),
    (COMP, {"prompt": "hi", "use_beam_search": True, "temperature": 0.5}, 400, "temperature", ["beam"]),
    (COMP, {"prompt": "hi", "use_beam_search": True, "n": 3, "best_of": 2}, 400, "best_of", []),
    (COMP, {"prompt": "hi", "logit_bias": {"abc": 10}}, 400, "logit_bias.abc", ["token ids"]),
    (COMP, {"prompt": "hi", "logit_bias": {"99999999": 10}}, 400, "logit_bias.99999999", ["vocabulary"]),
    (COMP, {"prompt": "hi", "allowed_token_ids": [10**9]}, 400, "allowed_token_ids", ["vocabulary"]),
    (COMP, {"prompt": "hi", "suffix": "x"}, 400, "suffix", []),
    (CHAT, {"messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"},
     400, "tool_choice", ["--enable-auto-tool-choice"]),
    (CHAT, {"messages": MSG, "tools": [{"type": "function"}]}, 400, "tools[0].function", ["required"]),
    (CHAT, {"messages": MSG, "response_format": {"type": "xml"}}, 400, "response_format.type", []),
    (CHAT, {"messages": MSG, "chat_template": "{{ 1 }}"}, 400, "chat_template", ["trust"]),
    (CHAT, {"messages": MSG, "priority": 3}, 400, "priority", ["scheduling-policy"]),
    (COMP, {"prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options", ["stream"]),
    # unknown model
    (COMP, {"prompt": "hi", "model": "gpt-4"}, 404, "model", ["does not exist"]),
    (CHAT, {"messages": MSG, "model": "nope"}, 404, "model", []),
]


@pytest.mark.parametrize("path,body,status,param,words", CASES,
                         ids=[f"{i}-{c[3]}" for i, c in enumerate(CASES)])
def test_bad_request(server, path, body, status, param, words):
    got, resp = post(server, path, body, timeout=60)
    assert got == status, resp
    err = resp["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param, err
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error")
    for w in words:
        assert w.lower() in err["message"].lower(), err


@pytest.mark.parametrize("raw", [b"{", b"not json", b"[1, 2]", b'"text"', b"", b'{"prompt": NaN}',
                                 b'{"prompt": "hi", "temperature": Infinity}', b"\xff\xfe{}",
                                 b"[" * 100000 + b"]" * 100000, b'{"prompt": "hi", "max_tokens": 1' + b"0" * 5000 + b"}"])
def test_malformed_json(server, raw):
    status, resp = request(server, "POST", COMP, raw=raw, timeout=60)
    assert status == 400, resp
    assert resp["error"]["type"] == "invalid_request_error"
    assert "JSON" in resp["error"]["message"] or "json" in resp["error"]["message"] or "empty" in resp["error"]["message"]


def test_unknown_route_and_method(server):
    status, resp = request(server, "GET", "/v1/nothing")
    assert status == 404 and "error" in resp
    status, resp = request(server, "GET", "/v1/completions")
    assert status == 405 and "error" in resp
    status, resp = request(server, "GET", "/v1/models/unknown-model")
    assert status == 404 and resp["error"]["code"] == "model_not_found"


def test_body_too_large(server):
    status, resp = request(server, "POST", COMP, raw=b'{"prompt": "' + b"a" * (65 << 20) + b'"}', timeout=120)
    assert status == 413 and "error" in resp


def test_detokenize_bad_ids(server):
    status, resp = post(server, "/detokenize", {"tokens": [10**9]})
    assert status == 400 and resp["error"]["param"] == "tokens"
    status, resp = post(server, "/tokenize", {"prompt": "a", "messages": MSG})
    assert status == 400


def test_server_still_healthy(server):
    status, _ = request(server, "GET", "/health")
    assert status == 200
    status, resp = post(server, COMP, {"prompt": "hi", "max_tokens": 1})
    assert status == 200 and resp["usage"]["completion_tokens"] == 1
    assert json.dumps(resp)
