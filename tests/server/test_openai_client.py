"""The real ``openai`` client (sync and async, streaming and not) against the real server."""
from __future__ import annotations

import asyncio

import openai
import pytest

from tests.server.conftest import MODEL_NAME
from tests.server.server_proc import post

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_list(openai_client):
    ids = [m.id for m in openai_client.models.list().data]
    assert ids == [MODEL_NAME]
    assert openai_client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_chat_paris_sync(openai_client):
    r = openai_client.chat.completions.create(model=MODEL_NAME, messages=FRANCE, max_tokens=20, temperature=0)
    c = r.choices[0]
    assert "Paris" in c.message.content
    assert c.message.role == "assistant"
    assert c.finish_reason == "stop"
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_paris_async_stream(server):
    async def main():
        client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
        chunks = []
        stream = await client.chat.completions.create(model=MODEL_NAME, messages=FRANCE, max_tokens=20,
                                                      temperature=0, stream=True,
                                                      stream_options={"include_usage": True})
        async for ch in stream:
            chunks.append(ch)
        await client.close()
        return chunks

    chunks = asyncio.run(main())
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_completion_stream_equals_nonstream(openai_client, temperature):
    kw = dict(model=MODEL_NAME, prompt="Once upon a time", max_tokens=12, temperature=temperature, seed=1234,
              extra_body={"ignore_eos": True})
    full = openai_client.completions.create(**kw)
    parts = list(openai_client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    streamed = "".join(p.choices[0].text for p in parts if p.choices)
    assert streamed == full.choices[0].text
    assert full.usage.completion_tokens == 12 and full.choices[0].finish_reason == "length"
    assert parts[-1].usage.completion_tokens == 12
    assert parts[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_chat_stream_equals_nonstream_async(server):
    async def main():
        client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
        msgs = [{"role": "user", "content": "Write a short poem about the sea."}]
        kw = dict(model=MODEL_NAME, messages=msgs, max_completion_tokens=14, temperature=0.8, seed=7)
        full = await client.chat.completions.create(**kw)
        text = ""
        async for ch in await client.chat.completions.create(stream=True, **kw):
            if ch.choices:
                text += ch.choices[0].delta.content or ""
        await client.close()
        return full, text

    full, text = asyncio.run(main())
    assert text == full.choices[0].message.content
    assert full.usage.completion_tokens <= 14


def test_usage_counts(server, openai_client):
    prompt = "The quick brown fox jumps over the lazy dog"
    status, tok = post(server, "/tokenize", {"prompt": prompt})
    assert status == 200
    r = openai_client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=5, temperature=0,
                                         logprobs=1, extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens == tok["count"] == len(tok["tokens"])
    assert r.usage.completion_tokens == 5 == len(r.choices[0].logprobs.tokens)
    assert r.usage.total_tokens == tok["count"] + 5
    # token-id prompts count exactly their ids; n choices add up
    r = openai_client.completions.create(model=MODEL_NAME, prompt=tok["tokens"], max_tokens=3, n=2, seed=3,
                                         extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage.prompt_tokens == tok["count"] and r.usage.completion_tokens == 6


def test_chat_usage_matches_tokenize(server, openai_client):
    status, tok = post(server, "/tokenize", {"messages": FRANCE})
    assert status == 200
    r = openai_client.chat.completions.create(model=MODEL_NAME, messages=FRANCE, max_tokens=3, temperature=0)
    assert r.usage.prompt_tokens == tok["count"]


def test_batch_prompts_and_stop(openai_client):
    r = openai_client.completions.create(model=MODEL_NAME, prompt=["1, 2, 3,", "Hello"], max_tokens=8,
                                         temperature=0, stop=[","])
    assert [c.index for c in r.choices] == [0, 1]
    first = r.choices[0]
    assert "," not in first.text and first.finish_reason == "stop"
    assert first.model_extra.get("stop_reason") == ","


def test_chat_logprobs(openai_client):
    r = openai_client.chat.completions.create(model=MODEL_NAME, messages=FRANCE, max_tokens=4, temperature=0,
                                              logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 2 and item.logprob <= 0.0
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
    # greedy: the chosen token is the most likely one
    assert all(abs(i.logprob - i.top_logprobs[0].logprob) < 1e-4 for i in content)


def test_echo(openai_client):
    r = openai_client.completions.create(model=MODEL_NAME, prompt="Hello there", max_tokens=2, temperature=0,
                                         echo=True, logprobs=0)
    c = r.choices[0]
    assert c.text.startswith("Hello there")
    assert c.logprobs.token_logprobs[0] is None  # the first prompt token has no logprob


def test_tokenize_detokenize_roundtrip(server):
    status, tok = post(server, "/tokenize", {"prompt": "Bonjour, le monde!", "return_token_strs": True})
    assert status == 200 and tok["max_model_len"] == 512 and len(tok["token_strs"]) == tok["count"]
    status, detok = post(server, "/detokenize", {"tokens": tok["tokens"]})
    assert status == 200 and detok["prompt"] == "Bonjour, le monde!"


def test_version_and_openapi(server):
    from tests.server.server_proc import request

    status, v = request(server, "GET", "/version")
    assert status == 200 and v["version"]
    status, doc = request(server, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize"} <= set(doc["paths"])
    props = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert {"messages", "max_completion_tokens", "top_k", "ignore_eos", "priority"} <= set(props)


def test_beam_search_passthrough(openai_client):
    r = openai_client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=4, n=2,
                                         best_of=3, extra_body={"use_beam_search": True})
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.choices[0].text != r.choices[1].text  # two different beams
    assert 0 < r.usage.completion_tokens <= 8


def test_request_id_header_echoed(server):
    import http.client
    import json

    for _ in range(2):  # the same id twice: still two distinct engine requests
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 1}),
                     {"Content-Type": "application/json", "X-Request-Id": "my-req-1"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        assert resp.status == 200 and resp.getheader("X-Request-Id") == "my-req-1" and body["id"] == "my-req-1"
