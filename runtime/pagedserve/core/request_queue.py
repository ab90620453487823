"""The waiting queue: first-come-first-served, or by priority with aging.

``fcfs``: arrival order; a preempted request goes back to the front.

``priority`` (lower value first, as in vLLM): requests are ordered by the static key
``(priority * aging_interval + arrival_time, priority, arrival_time, seq_no)``. Ordering by
``priority * I + arrival`` is the same as letting a waiting request's priority improve by one level
every ``I`` seconds it waits (aging), with the benefit that keys never change. It gives the starvation
bound: a request of priority ``p`` is ahead of every request of priority ``q`` that arrives more than
``(p - q) * I`` seconds after it, so only a finite set of requests can ever be served before it.
``aging_interval = 0`` turns aging off: strict ``(priority, arrival)`` order.
"""
from __future__ import annotations

import bisect
from collections import deque
from typing import Iterator

from pagedserve.request import Request


def priority_key(req: Request, aging_interval: float, seq_no: int) -> tuple:
    if aging_interval > 0:
        return (req.priority * aging_interval + req.arrival_time, req.priority, req.arrival_time, seq_no)
    return (req.priority, req.arrival_time, seq_no)


class FCFSQueue:
    def __init__(self) -> None:
        self._q: deque[Request] = deque()

    def push(self, req: Request) -> None:
        self._q.append(req)

    def push_front(self, req: Request) -> None:
        self._q.appendleft(req)

    def peek(self) -> Request:
        return self._q[0]

    def pop(self) -> Request:
        return self._q.popleft()

    def remove(self, req: Request) -> None:
        self._q.remove(req)

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._q)


class PriorityQueue:
    """Sorted by ``Request.sort_key`` (set once, when the request is added)."""

    def __init__(self) -> None:
        self._keys: list[tuple] = []
        self._reqs: list[Request] = []

    def push(self, req: Request) -> None:
        i = bisect.bisect_right(self._keys, req.sort_key)
        self._keys.insert(i, req.sort_key)
        self._reqs.insert(i, req)

    push_front = push  # a preempted request keeps its place (its key is static)

    def peek(self) -> Request:
        return self._reqs[0]

    def pop(self) -> Request:
        self._keys.pop(0)
        return self._reqs.pop(0)

    def remove(self, req: Request) -> None:
        i = bisect.bisect_left(self._keys, req.sort_key)
        while self._reqs[i] is not req:
            i += 1
        del self._keys[i], self._reqs[i]

    def __len__(self) -> int:
        return len(self._reqs)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._reqs)


def make_queue(policy: str) -> FCFSQueue | PriorityQueue:
    return PriorityQueue() if policy == "priority" else FCFSQueue()
