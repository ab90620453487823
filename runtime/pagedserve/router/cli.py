"""``pagedserve router`` flags and the process: the aiohttp app, the monitor, the discovery thread."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from pagedserve.router.discovery import DEFAULT_SELECTOR
from pagedserve.router.prefix_hash import DEFAULT_CHUNK_CHARS
from pagedserve.router.routing import ROUTING_LOGICS

log = logging.getLogger("pagedserve.router")


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1]) == 0:
        raise argparse.ArgumentTypeError(f"--backend must be an http(s):// URL, not {value!r}")
    return value.rstrip("/")


def _positive(kind: type) -> "callable":
    def parse(value: str) -> float:
        v = kind(value)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, not {value}")
        return v
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", action="append", type=_url, default=[], metavar="URL",
                   help="a replica's base URL (repeatable); combined with --k8s-discovery")
    p.add_argument("--k8s-discovery", action="store_true",
                   help="discover replicas from the EndpointSlices of the InferenceServices' Services")
    p.add_argument("--k8s-namespace", default=None, help="namespace to watch (default: all namespaces)")
    p.add_argument("--k8s-label-selector", default=DEFAULT_SELECTOR)
    p.add_argument("--k8s-port-name", default="http", help="the EndpointSlice port to route to")
    p.add_argument("--kubeconfig", default=None, help="default: in-cluster config, else ~/.kube/config")
    p.add_argument("--routing-logic", choices=ROUTING_LOGICS, default="prefix-aware")
    p.add_argument("--session-key", default="x-user-id", help="header whose value pins a session (session logic)")
    p.add_argument("--balance-factor", type=float, default=1.25,
                   help="bounded-load factor c: no replica gets more than c x the mean in-flight load")
    p.add_argument("--prefix-chunk-chars", type=_positive(int), default=DEFAULT_CHUNK_CHARS)
    p.add_argument("--health-check-interval", type=_positive(float), default=2.0)
    p.add_argument("--model-refresh-interval", type=_positive(float), default=30.0)
    p.add_argument("--max-failures", type=_positive(int), default=1,
                   help="consecutive connection failures that eject a replica")
    p.add_argument("--ejection-seconds", type=_positive(float), default=10.0)
    p.add_argument("--max-attempts", type=_positive(int), default=3,
                   help="replicas tried per request while nothing was sent to the client")
    p.add_argument("--request-timeout", type=_positive(float), default=600.0)
    p.add_argument("--api-key", default=os.environ.get("PAGEDSERVE_ROUTER_API_KEY"),
                   help="require this Bearer key on /v1/* (env PAGEDSERVE_ROUTER_API_KEY); otherwise the "
                        "client's Authorization header is passed through")
    p.add_argument("--backend-api-key", default=os.environ.get("PAGEDSERVE_API_KEY"),
                   help="send this Bearer key to the replicas instead of the client's (env PAGEDSERVE_API_KEY)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("router", help="one OpenAI endpoint in front of many replicas (docs/router.md)")
    add_arguments(p)
    p.set_defaults(func=run)


async def serve(args: argparse.Namespace, ready: asyncio.Event | None = None) -> None:
    import aiohttp
    from aiohttp import web

    from pagedserve.router.app import RouterState, build_app
    from pagedserve.router.backends import BackendPool
    from pagedserve.router.metrics import RouterMetrics
    from pagedserve.router.monitor import Monitor
    from pagedserve.router.routing import Router

    loop = asyncio.get_running_loop()
    pool = BackendPool(max_failures=args.max_failures, ejection_seconds=args.ejection_seconds)
    pool.set_source("static", set(args.backend))
    router = Router(args.routing_logic, args.balance_factor, args.session_key.lower(), args.prefix_chunk_chars)
    metrics = RouterMetrics()
    state = RouterState(pool, router, metrics, args.api_key, args.backend_api_key, args.max_attempts)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout, connect=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        state.session = session
        backend_headers = {"Authorization": f"Bearer {args.backend_api_key}"} if args.backend_api_key else {}
        monitor = Monitor(pool, session, args.health_check_interval, args.model_refresh_interval,
                          backend_headers=backend_headers,
                          on_change=lambda: metrics.healthy.set(pool.healthy_count()))
        watcher = None
        if args.k8s_discovery:
            from pagedserve.router.discovery import EndpointSliceWatcher

            def on_urls(urls: set[str]) -> None:
                if pool.set_source("k8s", urls):
                    log.info("discovered backends: %s", sorted(urls))
                    monitor.wake.set()

            watcher = EndpointSliceWatcher(lambda urls: loop.call_soon_threadsafe(on_urls, urls),
                                           args.k8s_namespace, args.k8s_label_selector, args.k8s_port_name,
                                           args.kubeconfig)
            watcher.start()
        await monitor.check_all()
        mon_task = asyncio.create_task(monitor.run())
        runner = web.AppRunner(build_app(state), handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port, backlog=1024)
        await site.start()
        log.info("router on http://%s:%d, %s routing over %d backend(s)", args.host, args.port,
                 args.routing_logic, len(pool.backends))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        print(f"READY http://{args.host}:{args.port}", flush=True)
        try:
            await stop.wait()
        finally:
            mon_task.cancel()
            if watcher is not None:
                watcher.stop()
            await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    if not args.backend and not args.k8s_discovery:
        raise ValueError("pagedserve router needs --backend URL (repeatable) and/or --k8s-discovery")
    asyncio.run(serve(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pagedserve router", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ValueError, OSError) as e:  # bad flag values, a port in use
        print(f"pagedserve router: error: {e}", file=sys.stderr)
        return 2
