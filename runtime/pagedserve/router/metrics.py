"""The router's own Prometheus metrics (its own registry: nothing of the engine's)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        p = "pagedserve:router_"
        self.requests = Counter(p + "requests", "Requests proxied to a backend, by backend, model and HTTP status.",
                                ["backend", "model", "status"], registry=r)
        self.latency = Histogram(p + "request_latency_seconds",
                                 "Time from routing to the last byte of the backend's response.",
                                 ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram(p + "time_to_first_byte_seconds",
                              "Time from routing to the backend's response headers.",
                              ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.decisions = Counter(p + "routing_decisions", "Routing decisions by routing logic and reason.",
                                 ["logic", "reason"], registry=r)
        self.retries = Counter(p + "retries", "Requests re-sent to another replica after a connection failure.",
                               ["backend"], registry=r)
        self.ejections = Counter(p + "backend_ejections", "Backends ejected by passive health checking.",
                                 ["backend"], registry=r)
        self.rejected = Counter(p + "requests_rejected", "Requests answered by the router itself, by reason.",
                                ["reason"], registry=r)
        self.healthy = Gauge(p + "healthy_backends", "Backends that pass health checks and are not ejected.",
                             registry=r)
        self.backends = Gauge(p + "backends", "Backends known (static and discovered).", registry=r)
        self.in_flight = Gauge(p + "backend_requests_in_flight", "Requests open on each backend.",
                               ["backend"], registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
