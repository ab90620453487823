"""Far more concurrent requests than --max-waiting-requests: some get 429, none hang, the server
stays healthy and serves again afterwards."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.server.conftest import start_server
from tests.server.server_proc import metric, post, request, wait_for


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "overload", ["--max-waiting-requests", "2", "--max-num-seqs", "2",
                                                      "--scheduling-policy", "priority"])
    yield srv
    srv.stop()


def test_overload_gets_429_not_hangs(small_server):
    srv = small_server
    n = 40

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, dict]:
        body = {"prompt": f"Request {i}:", "max_tokens": 4, "ignore_eos": True, "stream": i % 2 == 0}
        async with session.post(srv.base_url + "/v1/completions", json=body) as r:
            raw = await r.read()
            if r.status == 200 and body["stream"]:
                assert raw.rstrip().endswith(b"data: [DONE]")
                return 200, {}
            if r.status == 429:
                assert r.headers.get("Retry-After") == "1"
            return r.status, json.loads(raw)

    async def main():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
            return await asyncio.gather(*(one(session, i) for i in range(n)))

    results = asyncio.run(main())
    codes = [c for c, _ in results]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) > 0 and codes.count(200) >= 2, codes
    for code, body in results:
        if code == 429:
            assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "queue_full"
        elif body:
            assert body["usage"]["completion_tokens"] == 4
    assert metric(srv, "pagedserve:request_rejected_total", reason="queue_full") == codes.count(429)
    assert request(srv, "GET", "/health")[0] == 200
    wait_for(lambda: metric(srv, "pagedserve:num_requests_running") == 0
             and metric(srv, "pagedserve:kv_cache_usage_perc") == 0, 60, what="idle")
    status, resp = post(srv, "/v1/completions", {"prompt": "after the storm", "max_tokens": 2})
    assert status == 200 and resp["usage"]["completion_tokens"] == 2


def test_priority_requests_accepted_over_http(small_server):
    """With --scheduling-policy priority, chat requests carrying a ``priority`` (negative, zero, positive)
    are accepted over HTTP: each gets a 200 with at most max_tokens completion tokens. Only acceptance is
    checked here; the scheduling order itself is covered by tests/runtime/test_priority.py."""
    for prio in (-5, 0, 7):
        status, resp = post(small_server, "/v1/chat/completions",
                            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "priority": prio})
        assert status == 200 and resp["usage"]["completion_tokens"] <= 2
