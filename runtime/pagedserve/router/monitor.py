"""Active checks of every backend: ``/health`` (admission and re-admission after ejection),
``/metrics`` (load for least-load routing) and ``/v1/models`` (what it serves)."""
from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from pagedserve.router.backends import Backend, BackendPool

log = logging.getLogger("pagedserve.router")

GAUGES = {"pagedserve:num_requests_waiting": "waiting", "pagedserve:num_requests_running": "running",
          "pagedserve:kv_cache_usage_perc": "kv_usage"}


def parse_load(text: str) -> dict[str, float]:
    """waiting / running / kv_usage from a replica's /metrics (summed over its models; KV usage: max)."""
    out = {"waiting": 0.0, "running": 0.0, "kv_usage": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            attr = GAUGES.get(s.name)
            if attr == "kv_usage":
                out[attr] = max(out[attr], s.value)
            elif attr:
                out[attr] += s.value
    return out


def model_index(cards: list[dict]) -> dict[str, dict]:
    """name → card for each model id and each of its aliases."""
    out: dict[str, dict] = {}
    for c in cards:
        if not isinstance(c, dict) or not isinstance(c.get("id"), str):
            continue
        out[c["id"]] = c
        for alias in c.get("aliases") or []:
            if isinstance(alias, str):
                out.setdefault(alias, c)
    return out


class Monitor:
    def __init__(self, pool: BackendPool, session: aiohttp.ClientSession, interval: float = 2.0,
                 models_interval: float = 30.0, timeout: float = 3.0, backend_headers: dict | None = None,
                 on_change: "callable | None" = None) -> None:
        self.pool, self.session = pool, session
        self.interval, self.models_interval = interval, models_interval
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.headers = backend_headers or {}
        self.on_change = on_change
        self.wake = asyncio.Event()  # set by discovery: check the new backends now

    async def check(self, b: Backend) -> None:
        try:
            async with self.session.get(b.url + "/health", timeout=self.timeout, headers=self.headers) as r:
                ok = r.status == 200
            if ok and (not b.models or time.monotonic() - b.models_fetched_at >= self.models_interval):
                async with self.session.get(b.url + "/v1/models", timeout=self.timeout, headers=self.headers) as r:
                    r.raise_for_status()
                    b.models = model_index((await r.json()).get("data") or [])
                    b.models_fetched_at = time.monotonic()
            if ok:
                async with self.session.get(b.url + "/metrics", timeout=self.timeout, headers=self.headers) as r:
                    if r.status == 200:
                        for k, v in parse_load(await r.text()).items():
                            setattr(b, k, v)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            log.debug("health check of %s failed: %r", b.url, e)
            ok = False
        was = b.routable()
        if ok and time.monotonic() >= b.ejected_until:
            b.healthy, b.consecutive_failures = True, 0
        elif not ok:
            b.healthy = False
        if was != b.routable():
            log.info("backend %s is %s", b.url, "healthy" if b.routable() else "unhealthy")

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(b) for b in list(self.pool.backends.values())))
        if self.on_change:
            self.on_change()

    async def run(self) -> None:
        while True:
            await self.check_all()
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
