"""Property-based fuzzing of the request bodies, driven by the server's own /openapi.json.

Thousands of bodies — malformed bytes, wrong JSON types, extreme numbers, unknown fields, odd
unicode, and some valid ones — sent in concurrent batches: never a 5xx, never a hang, every error
in OpenAI's shape, and afterwards the server is healthy with no request left running.
Valid bodies are kept cheap: one token (max_tokens forced to 1, n to 1..2), so each concurrent batch
costs the engine about one step.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.server_proc import metric, request, wait_for

EXAMPLES = int(os.environ.get("PAGEDSERVE_FUZZ_EXAMPLES", "80"))  # batches of 24-48 bodies
VOCAB = 49152
CHEAP = {"max_tokens": st.just(1), "max_completion_tokens": st.just(1), "n": st.integers(1, 2),
         "best_of": st.none(), "min_tokens": st.integers(0, 1), "prompt_logprobs": st.integers(0, 2)}
# integers that would pass validation but make a request expensive
COSTLY_INTS = {"max_tokens": (2, 600), "max_completion_tokens": (2, 600), "n": (3, 1024),
               "best_of": (3, 1024), "min_tokens": (2, 600)}

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
                | st.text(st.characters(codec=None, categories=None), max_size=10))
any_json = st.recursive(json_scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c,
                                                                                            max_size=5),
                        max_leaves=12)


def _types(s: dict) -> list[str]:
    t = s.get("type")
    return t if isinstance(t, list) else ([t] if t else [])


def valid(s: dict, name: str = "") -> st.SearchStrategy:
    """Values that satisfy the schema (bounded small so generation stays cheap)."""
    if name in CHEAP:
        return CHEAP[name]
    if "anyOf" in s:
        return st.one_of([valid(o, name) for o in s["anyOf"]])
    if "enum" in s:
        return st.sampled_from(s["enum"])
    opts = []
    for t in _types(s):
        if t == "null":
            opts.append(st.none())
        elif t == "boolean":
            opts.append(st.booleans())
        elif t == "integer":
            lo, hi = s.get("minimum", -(2**40)), s.get("maximum", 2**40)
            if name in ("prompt", "messages") or (lo >= 0 and hi > VOCAB):
                hi = min(hi, VOCAB - 1)  # token ids
            opts.append(st.integers(lo, hi))
        elif t == "number":
            lo, hi = s.get("minimum", s.get("exclusiveMinimum", -1e6)), s.get("maximum", 1e6)
            f = st.floats(lo, hi, allow_nan=False, allow_infinity=False)
            if "exclusiveMinimum" in s:
                f = f.filter(lambda x, lo=lo: x > lo)
            opts.append(f)
        elif t == "string":
            opts.append(st.text(max_size=min(40, s.get("maxLength", 40))))
        elif t == "array":
            opts.append(st.lists(valid(s.get("items", {}), name), min_size=s.get("minItems", 0),
                                 max_size=min(4, s.get("maxItems", 4))))
        elif t == "object":
            props = s.get("properties", {})
            req = s.get("required", [])
            opts.append(st.fixed_dictionaries({k: valid(props[k], k) for k in req},
                                              optional={k: valid(v, k) for k, v in props.items() if k not in req}))
    return st.one_of(opts) if opts else any_json


def arbitrary(name: str) -> st.SearchStrategy:
    if name in COSTLY_INTS:
        lo, hi = COSTLY_INTS[name]
        return any_json.filter(lambda v: not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi))
    return any_json


def body_strategy(schema: dict, kind: str) -> st.SearchStrategy:
    props, required = schema["properties"], schema.get("required", [])

    @st.composite
    def build(draw: Any) -> Any:
        mode = draw(st.integers(0, 19))
        if mode == 0:
            return draw(st.binary(max_size=64))  # raw bytes: mostly not JSON
        if mode == 1:
            return json.dumps(draw(any_json)).encode()  # JSON, probably not an object
        body: dict[str, Any] = {}
        for k in required:
            if draw(st.integers(0, 9)):
                body[k] = draw(valid(props[k], k) if draw(st.integers(0, 3)) else arbitrary(k))
        names = draw(st.lists(st.sampled_from(sorted(props)), max_size=6, unique=True))
        for k in names:
            body[k] = draw(valid(props[k], k) if draw(st.booleans()) else arbitrary(k))
        if kind in ("completion", "chat") and "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = 1
        if kind in ("completion", "chat") and body.get("max_completion_tokens") is None:
            body.pop("max_completion_tokens", None)  # null would fall back to the model's room
            if body.get("max_tokens") is None:
                body["max_tokens"] = 1
        if draw(st.integers(0, 9)) == 0:
            body[draw(st.text(min_size=1, max_size=12))] = draw(any_json)
        return body

    return build()


PATHS = {"completion": "/v1/completions", "chat": "/v1/chat/completions", "tokenize": "/tokenize",
         "detokenize": "/detokenize"}


async def _send(session: aiohttp.ClientSession, base: str, kind: str, body: Any) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(base + PATHS[kind], data=data, headers={"Content-Type": "application/json"}) as r:
        raw = await r.read()
        return r.status, r.headers.get("Content-Type", ""), raw


def _check(kind: str, body: Any, status: int, ctype: str, raw: bytes) -> None:
    assert status < 500, (kind, body, status, raw[:500])
    if status >= 400:
        err = json.loads(raw)["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["message"], str) and err["message"]
    elif "event-stream" in ctype:
        assert raw.rstrip().endswith(b"data: [DONE]"), raw[-200:]
        assert b'"error"' not in raw, raw[-500:]
    else:
        json.loads(raw)


def test_fuzz_request_bodies(server):
    status, doc = request(server, "GET", "/openapi.json")
    assert status == 200
    schemas = doc["components"]["schemas"]
    strategies = {
        "completion": body_strategy(schemas["CompletionRequest"], "completion"),
        "chat": body_strategy(schemas["ChatCompletionRequest"], "chat"),
        "tokenize": body_strategy(schemas["TokenizeRequest"], "tokenize"),
        "detokenize": body_strategy(schemas["DetokenizeRequest"], "detokenize"),
    }
    item = st.sampled_from(["completion", "completion", "chat", "chat", "tokenize", "detokenize"]).flatmap(
        lambda k: st.tuples(st.just(k), strategies[k]))
    stats = {"sent": 0, "ok": 0, "http_s": 0.0, "batches": 0}
    by_kind: dict[tuple[str, bool], int] = {}  # (kind, accepted) -> count

    async def run_batch(batch: list) -> None:
        timeout = aiohttp.ClientTimeout(total=90)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            results = await asyncio.gather(*(_send(session, server.base_url, k, b) for k, b in batch))
        for (kind, body), (st_, ctype, raw) in zip(batch, results):
            _check(kind, body, st_, ctype, raw)
            stats["sent"] += 1
            stats["ok"] += st_ == 200
            by_kind[kind, st_ == 200] = by_kind.get((kind, st_ == 200), 0) + 1
        stats["batches"] += 1

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(item, min_size=24, max_size=48))
    def fuzz(batch: list) -> None:
        t0 = time.monotonic()
        asyncio.run(run_batch(batch))
        stats["http_s"] += time.monotonic() - t0

    fuzz()
    print(f"fuzz: {stats['sent']} bodies, {stats['ok']} accepted, {stats['http_s']:.1f} s in HTTP")
    # every example ran and sent its whole batch (24-48 bodies), some bodies were accepted, and every
    # endpoint's validator rejected some: at any example count (80 by default: ~2,400 bodies)
    assert stats["batches"] == EXAMPLES, stats
    assert stats["sent"] >= 24 * EXAMPLES, stats
    assert stats["ok"] > 0 and all(by_kind.get((k, False), 0) > 0 for k in PATHS), by_kind
    assert request(server, "GET", "/health")[0] == 200
    wait_for(lambda: metric(server, "pagedserve:num_requests_running") == 0
             and metric(server, "pagedserve:kv_cache_usage_perc") == 0, 60, what="engine idle after fuzzing")
