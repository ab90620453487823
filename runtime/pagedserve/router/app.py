"""The router's HTTP app: OpenAI routes proxied by ``model``, the merged ``/v1/models``, ``/health``,
``/metrics``."""
from __future__ import annotations

import hmac
import json
from typing import Any

import aiohttp
from aiohttp import web

from pagedserve.router.backends import BackendPool
from pagedserve.router.errors import error_response
from pagedserve.router.metrics import RouterMetrics
from pagedserve.router.proxy import proxy
from pagedserve.router.routing import Router

PROXIED = ("/v1/completions", "/v1/chat/completions")


class RouterState:
    def __init__(self, pool: BackendPool, router: Router, metrics: RouterMetrics, api_key: str | None,
                 backend_api_key: str | None, max_attempts: int) -> None:
        self.pool, self.router, self.metrics = pool, router, metrics
        self.api_key = api_key.encode() if api_key else None
        self.backend_api_key = backend_api_key
        self.max_attempts = max_attempts
        self.session: aiohttp.ClientSession | None = None


def _state(request: web.Request) -> RouterState:
    return request.app["state"]


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    st = _state(request)
    if st.api_key and request.path.startswith("/v1/"):
        got = request.headers.get("Authorization", "")
        if not (got.startswith("Bearer ") and hmac.compare_digest(got[7:].strip().encode(), st.api_key)):
            st.metrics.rejected.labels("unauthorized").inc()
            return error_response(401, "invalid or missing API key (Authorization: Bearer ...)",
                                  code="invalid_api_key")
    return await handler(request)


async def generation(request: web.Request) -> web.StreamResponse:
    st = _state(request)
    raw = await request.read()
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        st.metrics.rejected.labels("bad_request").inc()
        return error_response(400, f"the request body is not valid JSON: {e}", param="body")
    if not isinstance(body, dict):
        st.metrics.rejected.labels("bad_request").inc()
        return error_response(400, "the request body must be a JSON object", param="body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        st.metrics.rejected.labels("bad_request").inc()
        return error_response(400, "'model' is required and must be a string", param="model")
    if model not in st.pool.known_models():
        st.metrics.rejected.labels("unknown_model").inc()
        known = ", ".join(sorted(c["id"] for c in st.pool.model_cards())) or "none yet"
        return error_response(404, f"The model `{model}` does not exist. Known models: {known}.",
                              param="model", code="model_not_found")

    def pick(exclude: set[str]) -> tuple[Any, str] | None:
        replicas = [b for b in st.pool.replicas(model) if b.url not in exclude]
        if not replicas:
            return None
        b, reason = st.router.pick(replicas, body, request.headers)
        st.metrics.decisions.labels(st.router.logic, reason if not exclude else "retry").inc()
        return b, reason

    assert st.session is not None
    return await proxy(request, raw, model, pick, st.pool, st.session, st.metrics, st.backend_api_key,
                       st.max_attempts)


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": _state(request).pool.model_cards()})


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    for card in _state(request).pool.model_cards():
        if card["id"] == name or name in (card.get("aliases") or []):
            return web.json_response(card)
    return error_response(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")


async def health(request: web.Request) -> web.Response:
    n = _state(request).pool.healthy_count()
    if n == 0:
        return error_response(503, "no healthy backend", code="no_healthy_backend")
    return web.json_response({"healthy_backends": n})


async def metrics(request: web.Request) -> web.Response:
    st = _state(request)
    st.metrics.healthy.set(st.pool.healthy_count())
    st.metrics.backends.set(len(st.pool.backends))
    body, ctype = st.metrics.render()
    return web.Response(body=body, headers={"Content-Type": ctype})


async def backends(request: web.Request) -> web.Response:
    """What the router knows about each backend (for operators and tests)."""
    return web.json_response([{"url": b.url, "healthy": b.routable(), "sources": sorted(b.sources),
                               "models": sorted(b.models), "in_flight": b.in_flight, "waiting": b.waiting,
                               "running": b.running, "kv_cache_usage_perc": b.kv_usage}
                              for b in _state(request).pool.backends.values()])


def build_app(state: RouterState, max_body_bytes: int = 64 << 20) -> web.Application:
    app = web.Application(middlewares=[auth_middleware], client_max_size=max_body_bytes)
    app["state"] = state
    for path in PROXIED:
        app.router.add_post(path, generation)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/backends", backends)
    return app
