"""The replicas the router knows: where they come from, what they serve, how loaded and healthy.

Backends come from sources (``static`` flags, ``k8s`` discovery); each source's set is replaced as a
whole. A backend is routable when it is healthy (its last ``/health`` answered 200 and it is not
ejected) and its ``/v1/models`` listed the requested model (an id or an alias).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any


@dataclasses.dataclass
class Backend:
    url: str
    sources: set[str] = dataclasses.field(default_factory=set)
    models: dict[str, dict] = dataclasses.field(default_factory=dict)  # name (id or alias) -> model card
    healthy: bool = False  # until the first health check answers
    ejected_until: float = 0.0  # passive ejection: not routable before this (monotonic)
    consecutive_failures: int = 0
    in_flight: int = 0  # requests this router has open on it
    waiting: float = 0.0  # scraped from /metrics: pagedserve:num_requests_waiting
    running: float = 0.0  # pagedserve:num_requests_running
    kv_usage: float = 0.0  # pagedserve:kv_cache_usage_perc
    models_fetched_at: float = 0.0

    def routable(self, now: float | None = None) -> bool:
        return self.healthy and (now or time.monotonic()) >= self.ejected_until

    def load_score(self) -> tuple[float, float]:
        """Least-load order: queued + running work (the router's own count when it is larger, since
        scrapes lag), then KV-cache usage."""
        return max(self.in_flight, self.waiting + self.running) + self.waiting, self.kv_usage


class BackendPool:
    def __init__(self, max_failures: int = 1, ejection_seconds: float = 10.0) -> None:
        self.backends: dict[str, Backend] = {}
        self.max_failures = max_failures
        self.ejection_seconds = ejection_seconds
        self.version = 0  # bumped on every membership change (the poller refreshes new backends)

    # -- membership ---------------------------------------------------------------------------
    def set_source(self, source: str, urls: set[str]) -> bool:
        """Replace ``source``'s backends with ``urls``; True when the membership changed."""
        urls = {u.rstrip("/") for u in urls}
        changed = False
        for url in urls:
            b = self.backends.get(url)
            if b is None:
                b = self.backends[url] = Backend(url)
                changed = True
            b.sources.add(source)
        for url, b in list(self.backends.items()):
            if source in b.sources and url not in urls:
                b.sources.discard(source)
                if not b.sources:
                    del self.backends[url]
                    changed = True
        if changed:
            self.version += 1
        return changed

    # -- health -------------------------------------------------------------------------------
    def record_success(self, b: Backend) -> None:
        b.consecutive_failures = 0

    def record_failure(self, b: Backend) -> bool:
        """A request could not reach ``b``; True when this ejected it."""
        b.consecutive_failures += 1
        if b.consecutive_failures >= self.max_failures and b.routable():
            b.ejected_until = time.monotonic() + self.ejection_seconds
            b.healthy = False  # re-admitted by the next good active check after the ejection time
            return True
        return False

    # -- models -------------------------------------------------------------------------------
    def replicas(self, model: str) -> list[Backend]:
        now = time.monotonic()
        return [b for b in self.backends.values() if model in b.models and b.routable(now)]

    def known_models(self) -> set[str]:
        return {name for b in self.backends.values() for name in b.models}

    def model_cards(self) -> list[dict[str, Any]]:
        """The merged ``/v1/models`` list: one card per model id (adapters keep their ``parent``),
        from any backend that serves it, routable ones first."""
        cards: dict[str, dict] = {}
        order = sorted(self.backends.values(), key=lambda b: not b.routable())
        for b in order:
            for name, card in b.models.items():
                if name == card.get("id") and name not in cards:
                    cards[name] = card
        return [cards[k] for k in sorted(cards)]

    def healthy_count(self) -> int:
        now = time.monotonic()
        return sum(b.routable(now) for b in self.backends.values())
