"""The routing pieces on their own: prefix hashes, consistent hashing with bounded loads, the
routing logics' choices, label selectors, parsing a replica's load from its metrics text."""
from __future__ import annotations

import collections

import pytest

from pagedserve.router.backends import Backend, BackendPool
from pagedserve.router.discovery import selector_matches
from pagedserve.router.hashring import HashRing
from pagedserve.router.monitor import model_index, parse_load
from pagedserve.router.prefix_hash import affinity_key, chunk_hashes, request_hashes
from pagedserve.router.routing import Router


def _conv(turns: int) -> dict:
    msgs = [{"role": "system", "content": "be brief"}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"question {i} " * 20})
        if i < turns - 1:
            msgs.append({"role": "assistant", "content": f"answer {i}"})
    return {"model": "m", "messages": msgs}


def test_chunk_hashes_are_chained_prefix_hashes() -> None:
    a, b = chunk_hashes("x" * 300, 128), chunk_hashes("x" * 256 + "y" * 44, 128)
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert chunk_hashes("y" + "x" * 299, 128)[1] != a[1]  # a chunk's hash depends on everything before it


def test_affinity_key_is_the_same_for_every_turn_of_a_conversation() -> None:
    keys = {affinity_key(_conv(t)) for t in (1, 2, 3, 5)}
    assert len(keys) == 1
    other = _conv(2)
    other["messages"][1]["content"] = "another conversation"
    assert affinity_key(other) not in keys
    # completions: the first chunk decides
    assert affinity_key({"prompt": "p" * 500}) == affinity_key({"prompt": "p" * 128 + "q"})
    key, hashes, anchor = request_hashes({"prompt": [[1, 2, 3]]})
    assert key and len(hashes) == 1 and anchor == 1
    conv = _conv(3)
    _, hashes, anchor = request_hashes(conv, 128)
    first_user = len("system\x1fbe brief\x1e") + len("user\x1f" + "question 0 " * 20 + "\x1e")
    assert anchor == first_user // 128 and len(hashes) > anchor


def test_ring_keeps_keys_when_a_member_leaves() -> None:
    members = [f"http://10.0.0.{i}:8000" for i in range(4)]
    full, less = HashRing(members), HashRing(members[:3])
    keys = [f"k{i}".encode() for i in range(400)]
    zero = lambda m: 0  # noqa: E731
    moved = 0
    for k in keys:
        home, _ = full.lookup(k, set(members), zero)
        after, _ = less.lookup(k, set(members[:3]), zero)
        moved += home != after
        assert home == members[3] or home == after  # only the departed member's keys move
    assert 0 < moved < len(keys) / 2


def test_bounded_load_caps_a_hot_key() -> None:
    members = {f"http://r{i}" for i in range(3)}
    ring = HashRing(members)
    load: collections.Counter[str] = collections.Counter()
    spills = 0
    for _ in range(30):  # one hot key, requests that stay open
        m, spilled = ring.lookup(b"hot", members, lambda x: load[x], c=1.25)
        load[m] += 1
        spills += spilled
    total = sum(load.values())
    assert max(load.values()) <= -(-1.25 * total // 3) + 1  # ceil(c * mean) (+1 for the last placed)
    assert spills > 0 and len(load) == 3


def test_router_logics() -> None:
    reps = [Backend(f"http://r{i}", healthy=True) for i in range(3)]
    rr = Router("roundrobin")
    assert [rr.pick(reps, {}, {})[0].url for _ in range(6)] == [b.url for b in reps] * 2
    reps[0].waiting, reps[1].running, reps[2].kv_usage = 3, 1, 0.5
    assert Router("least-load").pick(reps, {}, {}) == (reps[2], "least_load")
    sess = Router("session")
    picks = {sess.pick(reps, {}, {"x-user-id": "u1"})[0].url for _ in range(5)}
    assert len(picks) == 1 and sess.pick(reps, {}, {})[1] == "least_load"
    pa = Router("prefix-aware")
    b1, why1 = pa.pick(reps, _conv(1), {})
    b2, why2 = pa.pick(reps, _conv(3), {})
    assert b1 is b2 and why1 == "prefix_hash" and why2 in ("prefix_hash", "prefix_hit")
    # a new conversation sharing only the anchor's chunks is placed by the ring, not the table
    shared = _conv(1)
    shared["messages"][0]["content"] = "be brief " * 40  # a long shared system prompt
    homes = {pa.pick(reps, {**shared, "messages": [shared["messages"][0],
                                                  {"role": "user", "content": f"hello {i}"}]}, {})[0].url
             for i in range(12)}
    assert len(homes) > 1
    b1.in_flight = 10  # its home is full: the conversation spills to another replica
    b3, why3 = pa.pick(reps, _conv(4), {})
    assert b3 is not b1 and why3 == "prefix_spill"
    with pytest.raises(ValueError, match="--routing-logic"):
        Router("random")


def test_pool_membership_and_ejection() -> None:
    pool = BackendPool(max_failures=2, ejection_seconds=60)
    assert pool.set_source("static", {"http://a/", "http://b"})
    assert not pool.set_source("k8s", {"http://b"})  # known already: no membership change
    assert pool.backends["http://b"].sources == {"static", "k8s"}
    pool.set_source("static", set())
    assert set(pool.backends) == {"http://b"}
    b = pool.backends["http://b"]
    b.healthy, b.models = True, model_index([{"id": "m", "aliases": ["chat"]}, {"id": "lora1", "parent": "m"}])
    assert [x.url for x in pool.replicas("chat")] == ["http://b"]
    assert [c["id"] for c in pool.model_cards()] == ["lora1", "m"] and pool.model_cards()[0]["parent"] == "m"
    assert not pool.record_failure(b) and pool.record_failure(b)
    assert pool.replicas("m") == [] and pool.healthy_count() == 0


def test_selector_and_load_parsing() -> None:
    labels = {"app.kubernetes.io/managed-by": "pagedserve-operator", "app.kubernetes.io/component": "inference"}
    assert selector_matches("app.kubernetes.io/managed-by=pagedserve-operator,app.kubernetes.io/component", labels)
    assert not selector_matches("app.kubernetes.io/component!=inference", labels)
    assert not selector_matches("tier==gpu", labels) and selector_matches("!tier", labels)
    text = ('# TYPE pagedserve:num_requests_waiting gauge\n'
            'pagedserve:num_requests_waiting{model_name="a",engine="0"} 2.0\n'
            'pagedserve:num_requests_waiting{model_name="b",engine="0"} 1.0\n'
            '# TYPE pagedserve:kv_cache_usage_perc gauge\n'
            'pagedserve:kv_cache_usage_perc{model_name="a",engine="0"} 0.25\n')
    assert parse_load(text) == {"waiting": 3.0, "running": 0.0, "kv_usage": 0.25}
