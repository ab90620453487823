"""``pagedserve router`` over three real ``pagedserve serve`` replicas on loopback, through the real
``openai`` client: routing by model, the merged model list, streaming, auth, prefix affinity and
its measured prefix-cache hit rate vs round-robin (through the benchmark's streamed stdlib client),
and a replica killed mid-run (kept last: it takes one replica away from the session's fixture)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time
from typing import Any

import openai
import pytest

from tests.router.bench_router import load_conversations, measure
from tests.router.conftest import NAMES, backend_args
from tests.router.procs import SHARED_NAME
from tests.server.server_proc import metric, post, request, wait_for

pytestmark = pytest.mark.timeout(300)


def client(router: Any, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url + "/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def router(replicas, start_router):
    r = start_router(backend_args(replicas), "prefix-aware")
    r.wait_models({*NAMES, SHARED_NAME})
    return r


def test_models_are_merged_and_requests_routed_by_model(router, replicas) -> None:
    c = client(router)
    assert sorted(m.id for m in c.models.list().data) == sorted(NAMES)
    card = c.models.retrieve(SHARED_NAME)  # an alias resolves to a card
    assert card.id in NAMES
    for name, rep in zip(NAMES, replicas):
        raw = c.chat.completions.with_raw_response.create(
            model=name, messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=8, temperature=0)
        assert raw.headers["x-pagedserve-replica"] == rep.base_url
        out = raw.parse()
        assert out.model == name and out.choices[0].message.content
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="nope", prompt="hi", max_tokens=1)
    err = e.value.body
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert all(n in err["message"] for n in NAMES)
    status, body = post(router, "/v1/completions", {"prompt": "hi"})
    assert status == 400 and body["error"]["param"] == "model"
    status, body = request(router, "POST", "/v1/completions", raw=b"{not json")
    assert status == 400 and body["error"]["param"] == "body"


def test_streaming_passes_through_unbuffered(router, replicas) -> None:
    c = client(router)
    msgs = [{"role": "user", "content": "Count from one to twenty in words."}]
    direct = openai.OpenAI(base_url=replicas[1].base_url + "/v1", api_key="x", max_retries=0)
    want = direct.chat.completions.create(model="beta", messages=msgs, max_tokens=24, temperature=0)
    arrivals, text = [], []
    for chunk in c.chat.completions.create(model="beta", messages=msgs, max_tokens=24, temperature=0, stream=True):
        arrivals.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
    assert "".join(text) == want.choices[0].message.content
    assert len(arrivals) >= 10 and arrivals[-1] - arrivals[0] > 0.05  # chunks came as they were made
    completion = "".join(ch.choices[0].text for ch in c.completions.create(
        model=SHARED_NAME, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True))
    assert completion == direct.completions.create(model="beta", prompt="The capital of France is", max_tokens=8,
                                                   temperature=0).choices[0].text


def test_router_api_key(replicas, start_router) -> None:
    r = start_router([*backend_args(replicas[:1]), "--api-key", "router-secret"], "auth")
    r.wait_models({"alpha"}, headers={"Authorization": "Bearer router-secret"})
    with pytest.raises(openai.AuthenticationError):
        client(r, "wrong").models.list()
    assert client(r, "router-secret").completions.create(model="alpha", prompt="Hi", max_tokens=2).choices
    assert request(r, "GET", "/health")[0] == 200  # probes need no key


def test_prefix_affinity_raises_the_hit_rate(router, replicas, start_router) -> None:
    convs = load_conversations(9, 3)
    rr = start_router([*backend_args(replicas), "--routing-logic", "roundrobin"], "roundrobin")
    rr.wait_models({SHARED_NAME})
    # one conversation at a time: round-robin then sends a conversation's 3 turns to the 3 replicas
    # exactly (with several in flight its stickiness depends on thread timing); prefix-aware keeps them
    pa = measure(router.base_url, replicas, SHARED_NAME, convs, max_tokens=4, concurrency=1)
    rob = measure(rr.base_url, replicas, SHARED_NAME, convs, max_tokens=4, concurrency=1)
    print(f"prefix-aware: hit rate {pa['hit_rate']:.1%}, sticky {pa['sticky']:.0%}, {pa['req_per_s']:.2f} req/s; "
          f"round-robin: hit rate {rob['hit_rate']:.1%}, sticky {rob['sticky']:.0%}, {rob['req_per_s']:.2f} req/s")
    # conversations keep their replica; bounded load may move one whose home is full (c = 1.25)
    assert pa["sticky"] >= 0.75, pa["replicas"]
    assert len({r for conv in pa["replicas"] for r in conv}) == 3  # ...and are spread over all three
    assert rob["sticky"] == 0, rob["replicas"]
    # The goal is 2x (the benchmark measured 2.15x, docs/router.md). Round-robin's hits here are
    # the template's shared system prompt only; assert a margin, with the mechanism asserted exactly above.
    assert pa["hit_rate"] >= 1.25 * rob["hit_rate"], (pa["hit_rate"], rob["hit_rate"])
    reasons = {k: v for k, v in ((lab, metric(router, "pagedserve:router_routing_decisions_total", reason=lab))
                                 for lab in ("prefix_hit", "prefix_hash")) if v}
    assert reasons.get("prefix_hash", 0) >= 9 and reasons.get("prefix_hit", 0) > 0, reasons


def test_client_disconnect_aborts_the_request_on_the_replica(router, replicas) -> None:
    alpha = replicas[0]
    aborted = metric(alpha, "pagedserve:request_success_total", finished_reason="abort")
    stream = client(router).completions.create(model="alpha", prompt="Tell me a very long story.", max_tokens=400,
                                                temperature=0, stream=True, extra_body={"ignore_eos": True})
    next(iter(stream))  # the first event arrived: the replica is generating
    stream.close()  # the client goes away
    wait_for(lambda: metric(alpha, "pagedserve:request_success_total", finished_reason="abort") > aborted, 30,
             what="the replica to abort the request")
    wait_for(lambda: metric(alpha, "pagedserve:num_requests_running") == 0, 30, what="nothing left running")


def test_ejected_replica_is_readmitted_by_the_active_check(replicas) -> None:
    """Passive ejection, then re-admission by the next good /health after the ejection time (a real replica)."""
    import aiohttp

    from pagedserve.router.backends import BackendPool
    from pagedserve.router.monitor import Monitor

    async def run() -> None:
        pool = BackendPool(max_failures=1, ejection_seconds=1.0)
        pool.set_source("static", {replicas[1].base_url})
        async with aiohttp.ClientSession() as session:
            mon = Monitor(pool, session)
            await mon.check_all()
            b = pool.backends[replicas[1].base_url]
            assert b.routable() and {"beta", SHARED_NAME} <= set(b.models)
            assert pool.record_failure(b) and not b.routable()
            await mon.check_all()  # healthy, but still inside the ejection time
            assert not b.routable()
            await asyncio.sleep(1.1)
            await mon.check_all()
            assert b.routable() and pool.replicas("beta") == [b]

    asyncio.run(run())


def _one(c: openai.OpenAI, i: int, stream: bool, started: dict[int, bool]) -> str | None:
    """None when the request succeeded, else the error."""
    prompt = f"Request {i}: write a long story about a dragon number {i * 7919}."
    try:
        if not stream:
            out = c.completions.create(model=SHARED_NAME, prompt=prompt, max_tokens=24, temperature=0)
            return None if out.choices and out.choices[0].finish_reason else f"no choice: {out}"
        for ch in c.completions.create(model=SHARED_NAME, prompt=prompt, max_tokens=24, temperature=0,
                                       stream=True):
            if ch.choices and ch.choices[0].text:
                started[i] = True
        return None
    except Exception as e:  # noqa: BLE001 — reported by the test
        return repr(e)


def _in_flight(router: Any) -> dict[str, int]:
    return {b["url"]: b["in_flight"] for b in request(router, "GET", "/backends", timeout=10)[1]}


def test_a_replica_killed_mid_run_fails_no_request_that_had_not_streamed(router, replicas) -> None:
    c = client(router)
    started: dict[int, bool] = {}
    jobs = [(i, i % 3 == 0) for i in range(15)]  # 10 non-streaming, 5 streaming
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
        futs = {ex.submit(_one, c, i, s, started): (i, s) for i, s in jobs}
        # the victim: a replica with at least two of these requests open (the router's exact count)
        busy = wait_for(lambda: [u for u, n in _in_flight(router).items() if n >= 2], 60, interval=0.05,
                        what="a replica with two open requests")
        victim = next(r for r in replicas if r.base_url == busy[0])
        engines = victim.engine_core_pids()
        victim.proc.kill()
        for pid in engines:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        results = {futs[f]: f.result() for f in concurrent.futures.as_completed(futs)}
    failed = {k: v for k, v in results.items() if v is not None}
    not_started = {k: v for k, v in failed.items() if not started.get(k[0])}
    assert not not_started, f"requests failed before streaming: {not_started}"
    assert all(v is None for (i, stream), v in results.items() if not stream)  # non-streaming: all retried
    assert metric(router, "pagedserve:router_retries_total") >= 1
    assert metric(router, "pagedserve:router_backend_ejections_total", backend=victim.base_url) >= 1
    status, backends = request(router, "GET", "/backends")
    assert {b["url"]: b["healthy"] for b in backends}[victim.base_url] is False
    assert metric(router, "pagedserve:router_healthy_backends") == 2
    # the survivors take everything now
    outs = [c.completions.create(model=SHARED_NAME, prompt=f"after {i}", max_tokens=2) for i in range(6)]
    assert all(o.choices for o in outs)
