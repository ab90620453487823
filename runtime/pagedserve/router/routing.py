"""Routing logics: which replica of a model serves a request (production-stack's names).

* ``roundrobin``: the next replica in turn.
* ``session``: consistent hashing (bounded loads) on the ``--session-key`` header; least-load without it.
* ``prefix-aware`` (default): the replica that last served the longest prefix of this request's
  chunk hashes reaching past the affinity anchor (``prefix_hit``); else consistent hashing with
  bounded loads on the request's affinity key (``prefix_hash``, or ``prefix_spill`` when the key's
  home was full).
* ``least-load``: fewest queued + running requests, then lowest KV-cache usage.
"""
from __future__ import annotations

import collections
import itertools
import math
from typing import Iterable, Mapping

from pagedserve.router.backends import Backend
from pagedserve.router.hashring import HashRing
from pagedserve.router.prefix_hash import DEFAULT_CHUNK_CHARS, request_hashes

ROUTING_LOGICS = ("roundrobin", "session", "prefix-aware", "least-load")


class PrefixTable:
    """chunk hash → replica URL that last served a request with that prefix (LRU, bounded)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._d: collections.OrderedDict[bytes, str] = collections.OrderedDict()

    def longest_match(self, hashes: list[bytes], eligible: Mapping[str, Backend], cap: int,
                      min_chunks: int = 0) -> str | None:
        """The replica of the longest remembered prefix longer than ``min_chunks`` chunks."""
        for i in range(len(hashes) - 1, min_chunks - 1, -1):
            h = hashes[i]
            url = self._d.get(h)
            if url is not None and url in eligible and eligible[url].in_flight < cap:
                self._d.move_to_end(h)
                return url
        return None

    def record(self, hashes: Iterable[bytes], url: str) -> None:
        for h in hashes:
            self._d[h] = url
            self._d.move_to_end(h)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)


def least_loaded(replicas: Iterable[Backend]) -> Backend:
    return min(replicas, key=lambda b: (*b.load_score(), b.url))


class Router:
    def __init__(self, logic: str = "prefix-aware", balance_factor: float = 1.25, session_key: str = "x-user-id",
                 chunk_chars: int = DEFAULT_CHUNK_CHARS) -> None:
        if logic not in ROUTING_LOGICS:
            raise ValueError(f"--routing-logic must be one of {', '.join(ROUTING_LOGICS)}, not {logic!r}")
        if balance_factor <= 1.0:
            raise ValueError(f"--balance-factor must be > 1, not {balance_factor}")
        self.logic = logic
        self.c = balance_factor
        self.session_key = session_key
        self.chunk_chars = chunk_chars
        self._rings: collections.OrderedDict[frozenset[str], HashRing] = collections.OrderedDict()
        self.table = PrefixTable()
        self._rr = itertools.count()

    def ring(self, members: frozenset[str]) -> HashRing:
        """The ring of a replica set. A member's points depend only on its URL, so a key keeps its
        replica across membership changes unless that replica left (or is full)."""
        ring = self._rings.get(members)
        if ring is None:
            ring = self._rings[members] = HashRing(members)
            while len(self._rings) > 64:
                self._rings.popitem(last=False)
        self._rings.move_to_end(members)
        return ring

    def pick(self, replicas: list[Backend], body: dict, headers: Mapping[str, str]) -> tuple[Backend, str]:
        """(replica, reason) among ``replicas`` (non-empty, all routable)."""
        by_url = {b.url: b for b in replicas}
        if self.logic == "roundrobin":
            ordered = sorted(by_url)
            return by_url[ordered[next(self._rr) % len(ordered)]], "roundrobin"
        if self.logic == "least-load":
            return least_loaded(replicas), "least_load"
        ring = self.ring(frozenset(by_url))
        load = lambda url: by_url[url].in_flight  # noqa: E731
        if self.logic == "session":
            sid = headers.get(self.session_key)
            if not sid:
                return least_loaded(replicas), "least_load"
            url, spilled = ring.lookup(sid.encode(), set(by_url), load, self.c)
            return (by_url[url], "session_spill" if spilled else "session") if url else (least_loaded(replicas),
                                                                                         "least_load")
        key, hashes, anchor_chunks = request_hashes(body, self.chunk_chars)
        cap = math.ceil(self.c * (sum(b.in_flight for b in replicas) + 1) / len(replicas))
        # a remembered prefix counts only past the anchor: chunks inside it (a shared system prompt, the
        # first question) would herd new conversations onto one replica; the ring places those
        url = self.table.longest_match(hashes, by_url, cap, min_chunks=anchor_chunks)
        reason = "prefix_hit"
        if url is None:
            url, spilled = ring.lookup(key, set(by_url), load, self.c)
            reason = "prefix_spill" if spilled else "prefix_hash"
        if url is None:
            b, reason = least_loaded(replicas), "least_load"
        else:
            b = by_url[url]
        self.table.record(hashes, b.url)
        return b, reason
