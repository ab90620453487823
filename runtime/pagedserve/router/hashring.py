"""Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, 2016).

Each replica owns ``vnodes`` points on a 64-bit ring. A key goes to the first replica clockwise
from its hash whose load is below ``ceil(c * (total_load + 1) / n)``: with ``c = 1.25`` no replica
carries more than 25% above the mean, so one hot prefix spills to the next replicas on the ring
instead of overloading its home, and a key moves only when its home is full or leaves.
"""
from __future__ import annotations

import bisect
import hashlib
import math
from typing import Callable, Iterable


def _point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, members: Iterable[str] = (), vnodes: int = 160) -> None:
        self.vnodes = vnodes
        self._points: list[int] = []
        self._owners: list[str] = []
        self._members: frozenset[str] = frozenset()
        self.set_members(members)

    @property
    def members(self) -> frozenset[str]:
        return self._members

    def set_members(self, members: Iterable[str]) -> None:
        members = frozenset(members)
        if members == self._members:
            return
        pts = sorted((_point(f"{m}#{i}".encode()), m) for m in members for i in range(self.vnodes))
        self._points = [p for p, _ in pts]
        self._owners = [m for _, m in pts]
        self._members = members

    def walk(self, key: bytes) -> Iterable[str]:
        """Distinct members clockwise from ``key``'s point (each once)."""
        if not self._points:
            return
        start = bisect.bisect_left(self._points, _point(key))
        seen: set[str] = set()
        n = len(self._points)
        for i in range(n):
            m = self._owners[(start + i) % n]
            if m not in seen:
                seen.add(m)
                yield m
                if len(seen) == len(self._members):
                    return

    def lookup(self, key: bytes, eligible: set[str], load: Callable[[str], int],
               c: float = 1.25) -> tuple[str | None, bool]:
        """(member, spilled): the first eligible member clockwise below the load bound; ``spilled`` is
        True when the key's home (first eligible member) was full and a later one took it."""
        if not eligible:
            return None, False
        total = sum(load(m) for m in eligible)
        cap = math.ceil(c * (total + 1) / len(eligible))
        first = True
        for m in self.walk(key):
            if m not in eligible:
                continue
            if load(m) < cap:
                return m, not first
            first = False
        return None, True
