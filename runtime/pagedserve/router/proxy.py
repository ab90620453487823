"""Forwarding one request to a replica: streamed through, retried while nothing was sent.

* Streaming responses (``text/event-stream``) are written to the client chunk by chunk as they
  arrive (no buffering). Once the first byte went out the request is bound to that replica.
* Non-streaming responses are read whole, then sent: a replica dying mid-generation is retried
  on another replica, invisibly to the client.
* A connection failure (refused, reset, closed before the response) ejects the replica (passive
  health check) and retries on the next replica chosen by the routing logic.
* A client that disconnects cancels the handler; leaving the upstream context closes the
  upstream connection, and the replica aborts the request (it frees its KV blocks).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import aiohttp
from aiohttp import web

from pagedserve.router.backends import Backend, BackendPool
from pagedserve.router.errors import error_response
from pagedserve.router.metrics import RouterMetrics

log = logging.getLogger("pagedserve.router")

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length"}
REPLICA_HEADER = "x-pagedserve-replica"
RETRY_STATUSES = (502, 503)


class UpstreamFailed(Exception):
    """The replica could not be reached or dropped the connection before any byte reached the client."""


def forward_headers(headers: "aiohttp.typedefs.LooseHeaders", backend_api_key: str | None) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
    if backend_api_key:
        out = {k: v for k, v in out.items() if k.lower() != "authorization"}
        out["Authorization"] = f"Bearer {backend_api_key}"
    return out


async def send_once(request: web.Request, b: Backend, raw: bytes, headers: dict[str, str],
                    session: aiohttp.ClientSession, metrics: RouterMetrics, model: str) -> web.StreamResponse:
    """One attempt on ``b``; raises UpstreamFailed when the client received nothing."""
    t0 = time.monotonic()
    b.in_flight += 1
    metrics.in_flight.labels(b.url).set(b.in_flight)
    try:
        try:
            up_cm = session.post(b.url + request.path_qs, data=raw, headers=headers)
            up = await up_cm.__aenter__()
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
            raise UpstreamFailed(repr(e)) from e
        try:
            metrics.ttfb.labels(b.url).observe(time.monotonic() - t0)
            if up.status in RETRY_STATUSES:  # draining or its engine died: another replica may serve it
                raise UpstreamFailed(f"HTTP {up.status}: {(await up.read())[:300]!r}")
            ctype = up.headers.get("Content-Type", "application/json")
            out_headers = {REPLICA_HEADER: b.url}
            if up.headers.get("Retry-After"):
                out_headers["Retry-After"] = up.headers["Retry-After"]
            if not ctype.startswith("text/event-stream"):
                try:
                    data = await up.read()
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                    raise UpstreamFailed(repr(e)) from e
                resp = web.Response(status=up.status, body=data, headers={**out_headers, "Content-Type": ctype})
            else:
                try:  # nothing sent yet: a replica that dies before its first event is retried
                    first = await up.content.readany()
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                    raise UpstreamFailed(repr(e)) from e
                if not first:
                    raise UpstreamFailed("the replica closed the stream before any event")
                resp = web.StreamResponse(status=up.status, headers={**out_headers, "Content-Type": ctype,
                                                                     "Cache-Control": "no-cache"})
                await resp.prepare(request)
                await resp.write(first)
                try:
                    async for chunk in up.content.iter_any():
                        try:
                            await resp.write(chunk)
                        except ConnectionResetError:  # the client went away: abort upstream
                            up.close()
                            metrics.requests.labels(b.url, model, "client_disconnect").inc()
                            return resp
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
                    log.warning("stream from %s broke after the first byte: %r", b.url, e)
                    metrics.requests.labels(b.url, model, "broken_stream").inc()
                    return resp  # the client sees the stream end without [DONE]
                await resp.write_eof()
        except BaseException:  # client gone (cancelled), broken upstream, ...: drop the upstream connection
            up.close()
            raise
        finally:
            await up_cm.__aexit__(None, None, None)
        metrics.requests.labels(b.url, model, str(up.status)).inc()
        metrics.latency.labels(b.url).observe(time.monotonic() - t0)
        return resp
    finally:
        b.in_flight -= 1
        metrics.in_flight.labels(b.url).set(b.in_flight)


async def proxy(request: web.Request, raw: bytes, model: str, pick: Callable[[set[str]], tuple[Backend, str] | None],
                pool: BackendPool, session: aiohttp.ClientSession, metrics: RouterMetrics,
                backend_api_key: str | None, max_attempts: int) -> web.StreamResponse:
    """Send to the replica ``pick`` chooses; on UpstreamFailed eject it and try another."""
    headers = forward_headers(request.headers, backend_api_key)
    tried: set[str] = set()
    last = ""
    for attempt in range(max_attempts):
        choice = pick(tried)
        if choice is None:
            break
        b, _ = choice
        if attempt:
            metrics.retries.labels(b.url).inc()
        try:
            resp = await send_once(request, b, raw, headers, session, metrics, model)
        except UpstreamFailed as e:
            last = f"{b.url}: {e}"
            log.warning("request to %s failed before any byte was sent (%s); retrying", b.url, e)
            metrics.requests.labels(b.url, model, "connect_error").inc()
            tried.add(b.url)
            if pool.record_failure(b):
                metrics.ejections.labels(b.url).inc()
            continue
        pool.record_success(b)
        return resp
    metrics.rejected.labels("no_replica").inc()
    detail = f" (last error: {last})" if last else ""
    return error_response(503, f"no replica of model {model!r} could take the request{detail}",
                          code="no_healthy_replica")
