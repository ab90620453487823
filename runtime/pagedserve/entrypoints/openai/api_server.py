"""The OpenAI-compatible HTTP server (aiohttp).

``python -m pagedserve.entrypoints.openai.api_server [flags]`` and ``pagedserve serve [flags]`` run
:func:`run_server`: validate flags (unsupported features fail here, before the port is bound),
bind the port, then resolve the models (Hub download, GGUF conversion) and start one engine-core
process per served model while ``/health`` and the API answer 503 with the startup phase
(``{"status": "downloading" | "loading", "message": ...}``), serve, and on SIGTERM/SIGINT drain
in-flight requests for up to ``--shutdown-timeout`` seconds before exiting. A fatal start error is
the last line of stderr and the container's termination message (``/dev/termination-log``, or
``$PAGEDSERVE_TERMINATION_LOG``), and the exit code is non-zero.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from pagedserve import __version__, startup
from pagedserve.entrypoints.openai.errors import APIError
from pagedserve.entrypoints.openai.openapi import openapi_document

if TYPE_CHECKING:
    from pagedserve.engine.core_client import CoreProcess
    from pagedserve.entrypoints.openai.serving_common import ServedModels

# The handlers' modules (and through them torch and the engine) are imported by ``build_app``, not
# here: ``main`` starts the engine-core process before them, so its imports overlap this process's.
from pagedserve.entrypoints.openai.validation import parse_json_body

logger = logging.getLogger("pagedserve.server")

_PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize", "/reset_prefix_cache")
# named error codes, like every other error's (model_not_found, queue_full, ...)
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


@dataclass
class ServerState:
    served: ServedModels | None  # None while the engines start
    api_key: bytes | None = None
    body_timeout: float = 60.0  # --request-body-timeout
    metrics_prefix: str = "pagedserve"  # --metrics-prefix
    draining: bool = False
    in_flight: int = 0
    started: float = field(default_factory=time.time)
    phase_message: str = "starting"  # what the start-up is doing now (the 503 body's message)


STATE = web.AppKey("state", ServerState)
TERMINATION_LOG = "/dev/termination-log"  # Kubernetes' default terminationMessagePath
READY_LINE_DELAY_S = 2.0  # the start-up line waits this long for a first /health, then logs without it


class NotReadyError(APIError):
    """503 with the server's phase: ``{"status": phase, "message": ..., "error": {...}}``."""

    def __init__(self, status: str, message: str, code: str, **extra: Any) -> None:
        super().__init__(503, message, code=code)
        self.extra = {"status": status, "message": message, **extra}

    def body(self) -> dict:
        return {**self.extra, **super().body()}


def startup_status(state: ServerState) -> NotReadyError:
    """The 503 of a starting server: ``downloading`` while a Hub download runs, else ``loading``."""
    from pagedserve.models.hub import active_downloads

    downloads = active_downloads()
    if downloads:
        parts = []
        for d in downloads:
            if d["waiting_for_lock"]:
                parts.append(f"{d['model']}: waiting for another process downloading it into the shared cache")
            else:
                total = f" of {d['total_bytes'] / 1e6:.1f} MB" if d["total_bytes"] else ""
                parts.append(f"{d['model']}: {d['downloaded_bytes'] / 1e6:.1f} MB{total} downloaded")
        return NotReadyError("downloading", "downloading from the Hugging Face Hub: " + "; ".join(parts),
                             "starting", downloads=downloads)
    return NotReadyError("loading", f"the server is starting: {state.phase_message}", "starting")


def _served(state: ServerState) -> ServedModels:
    if state.served is None:
        raise startup_status(state)
    return state.served


# -- middleware -----------------------------------------------------------------------------------
@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    try:
        return await handler(request)
    except APIError as e:
        return e.response()
    except _Sent as e:
        return e.resp
    except web.HTTPException as e:
        if e.status < 400:
            raise
        msg = {404: f"no route for {request.method} {request.path}", 405: f"method {request.method} is not "
               f"allowed on {request.path}", 413: "the request body is too large"}.get(e.status, e.reason)
        return APIError(e.status, msg, code=_HTTP_CODES.get(e.status)).response()
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:  # a bug: say so, never hang the client
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return APIError(500, f"internal server error: {type(e).__name__}").response()


@web.middleware
async def auth_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
    key = request.app[STATE].api_key
    if key is not None and request.method != "OPTIONS" and request.path.startswith(_PROTECTED_PREFIXES):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8", "replace"), key)
        if not ok:
            raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
    return await handler(request)


# -- handlers -------------------------------------------------------------------------------------
def _generation(fn: Callable[..., Awaitable[web.StreamResponse]]) -> Callable[[web.Request], Awaitable[Any]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        if state.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        served = _served(state)
        state.in_flight += 1
        try:
            body = parse_json_body(await read_body(request, state.body_timeout))
            return await fn(request, body, served)
        finally:
            state.in_flight -= 1

    return handler


async def read_body(request: web.Request, timeout: float) -> bytes:
    """The whole body within ``timeout`` seconds of the headers, else 408 and the connection closes
    (a client that sends headers and a byte cannot hold a socket and a handler forever)."""
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except asyncio.TimeoutError:
        pass
    err = APIError(408, f"the request body did not arrive within {timeout:g} s (--request-body-timeout)",
                   code="request_timeout", headers={"Connection": "close"})
    resp = err.response()
    await resp.prepare(request)  # sent now, then the connection closes: no lingering read of the rest
    await resp.write_eof()
    request.protocol.force_close()
    raise _Sent(resp)


class _Sent(Exception):
    """A response already written (the error middleware returns it as it is)."""

    def __init__(self, resp: web.StreamResponse) -> None:
        super().__init__()
        self.resp = resp


def _json_handler(fn: Callable[..., Awaitable[web.StreamResponse]]) -> Callable[[web.Request], Awaitable[Any]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        served = _served(state)
        body = parse_json_body(await read_body(request, state.body_timeout))
        return await fn(request, body, served)

    return handler


def _model_card(m: Any) -> dict:
    return {"id": m.name, "object": "model", "created": m.created, "owned_by": "pagedserve",
            "root": m.engine.model_config.model, "parent": None, "max_model_len": m.engine.max_model_len,
            "aliases": m.names[1:], "permission": [],
            "quantization": m.engine.model_config.quantization}  # gptq, awq, compressed-tensors, fp8 or None


async def list_models(request: web.Request) -> web.Response:
    served = _served(request.app[STATE])
    cards = [_model_card(m) for m in served.models] + [adapter_card(a) for a in served.adapters.values()]
    return json_response({"object": "list", "data": cards})


async def get_model(request: web.Request) -> web.Response:
    m = _served(request.app[STATE]).resolve(request.match_info["model"])
    return json_response(adapter_card(m) if m.lora_request is not None else _model_card(m))


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.draining:
        raise NotReadyError("shutting_down", "the server is shutting down", "shutting_down")
    for eng in _served(state).engines:
        reason = eng.dead_reason
        if reason is not None:
            raise NotReadyError("failed", f"engine for {eng.served_model_name!r} is down: {reason}", "engine_dead")
    timeline = startup.current()
    if not timeline.logged:
        timeline.mark("first_health_200")
        timeline.log_once()
    return web.Response(status=200)


async def metrics(request: web.Request) -> web.Response:
    from pagedserve.metrics import metrics_text

    body, ctype = metrics_text(request.app[STATE].metrics_prefix)
    return web.Response(body=body, headers={"Content-Type": ctype})


async def reset_prefix_cache(request: web.Request) -> web.Response:
    """Forget every engine's free cached prefix blocks (as vLLM's endpoint; benchmarks reset between runs)."""
    dropped = {}
    for eng in _served(request.app[STATE]).engines:
        if eng.dead_reason is None:
            dropped[eng.served_model_name] = await eng.call_core("reset_prefix_cache")
    return json_response({"dropped_blocks": dropped})


async def version(request: web.Request) -> web.Response:
    return json_response({"version": __version__})


async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app["openapi"])


def json_response(obj: dict) -> web.Response:
    from pagedserve.entrypoints.openai.serving_common import json_response as respond

    return respond(obj)


def adapter_card(a: Any) -> dict:
    from pagedserve.entrypoints.openai.serving_lora import adapter_card as card

    return card(a)


def build_app(served: ServedModels | None, api_key: str | None = None, max_body_bytes: int = 64 << 20,
              body_timeout: float = 60.0, metrics_prefix: str = "pagedserve",
              allow_runtime_lora_updating: bool = False) -> web.Application:
    from pagedserve.entrypoints.openai.serving_chat import create_chat_completion
    from pagedserve.entrypoints.openai.serving_completion import create_completion
    from pagedserve.entrypoints.openai.serving_lora import load_lora_adapter, unload_lora_adapter
    from pagedserve.entrypoints.openai.serving_tokens import detokenize, tokenize

    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=max_body_bytes)
    app[STATE] = ServerState(served, api_key.encode("utf-8") if api_key else None, body_timeout=body_timeout,
                             metrics_prefix=metrics_prefix)
    app["openapi"] = openapi_document(__version__)
    r = app.router
    r.add_post("/v1/completions", _generation(create_completion))
    r.add_post("/v1/chat/completions", _generation(create_chat_completion))
    r.add_get("/v1/models", list_models)
    r.add_get("/v1/models/{model}", get_model)
    r.add_post("/tokenize", _json_handler(tokenize))
    r.add_post("/detokenize", _json_handler(detokenize))
    r.add_get("/health", health)
    r.add_get("/metrics", metrics)
    r.add_get("/version", version)
    r.add_post("/reset_prefix_cache", reset_prefix_cache)
    r.add_get("/openapi.json", openapi)
    if allow_runtime_lora_updating:  # --allow-runtime-lora-updating / VLLM_ALLOW_RUNTIME_LORA_UPDATING
        r.add_post("/v1/load_lora_adapter", _json_handler(load_lora_adapter))
        r.add_post("/v1/unload_lora_adapter", _json_handler(unload_lora_adapter))
    return app


# -- running --------------------------------------------------------------------------------------
def bind_socket(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=1024, reuse_port=False)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _in_daemon_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future:
    """Run blocking ``fn`` (a download, a conversion) in a daemon thread: SIGTERM need not wait for it."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not fut.done():
            fut.set_exception(error) if error is not None else fut.set_result(result)

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as e:  # noqa: BLE001 - handed to the event loop
            result, error = None, e
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: the server stopped meanwhile
            pass

    threading.Thread(target=run, name="pagedserve-resolve", daemon=True).start()
    return fut


async def _start(args: argparse.Namespace, prepared: Any, state: ServerState, processes: list[Any]) -> ServedModels:
    """Resolve the models (download, conversion, tokenizer) off the event loop while the engine-core
    processes (``processes``, started ahead) import the engine, then start the engines."""
    from pagedserve.entrypoints.openai.cli_serve import resolve_plans, start_engines

    state.phase_message = "resolving the model(s): converting or reading the weights, loading the tokenizer"
    try:
        plans = await _in_daemon_thread(resolve_plans, args, prepared, processes)
    except BaseException:
        await asyncio.gather(*(asyncio.to_thread(cp.close) for cp in processes), return_exceptions=True)
        raise
    state.phase_message = f"starting {len(plans)} engine core(s): loading the weights, allocating the KV cache"
    engines = asyncio.create_task(start_engines(plans, args, processes))
    try:
        await asyncio.sleep(0)  # the engine cores are configured: they build their models meanwhile
        from pagedserve.engine.core_proc import tune_gc

        tune_gc()  # the full collection over the start-up heap, while this process only waits
        startup.mark("gc_freeze")
    except BaseException:
        engines.cancel()
        await asyncio.gather(engines, return_exceptions=True)
        raise
    return await engines  # cancelling _start cancels this wait, and so start_engines


async def _serve(args: argparse.Namespace, prepared: Any, sock: socket.socket, processes: list[Any]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = {"count": 0}

    def on_signal(sig: signal.Signals) -> None:
        signals["count"] += 1
        logger.info("received %s%s", sig.name, "" if signals["count"] == 1 else " again: stopping now")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    from pagedserve.entrypoints.openai.serving_lora import runtime_updating_allowed

    # listen at once: while the models download and load, /health and the API answer 503 with the phase
    app = build_app(None, args.api_key, max_body_bytes=int(args.max_request_body_mb * (1 << 20)),
                    body_timeout=getattr(args, "request_body_timeout", 60.0),
                    metrics_prefix=getattr(args, "metrics_prefix", "pagedserve"),
                    allow_runtime_lora_updating=runtime_updating_allowed(getattr(args, "allow_runtime_lora_updating",
                                                                                 False)))
    state = app[STATE]
    access_log = None if args.disable_access_log else logging.getLogger("pagedserve.access")
    runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True, access_log=access_log,
                           keepalive_timeout=getattr(args, "timeout_keep_alive", 5.0))  # also bounds header reads
    await runner.setup()
    site = web.SockSite(runner, sock, shutdown_timeout=1.0)
    await site.start()
    host, port = sock.getsockname()[:2]
    logger.info("listening on http://%s:%d; loading %d model(s)", host, port, len(prepared))
    startup.mark("http_listen")
    start = asyncio.create_task(_start(args, prepared, state, processes))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({start, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not start.done():
        logger.info("stopping before the engines finished starting")
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
        await runner.cleanup()
        return 0
    waiter.cancel()
    try:
        served = start.result()  # raises if an engine failed to start
    except BaseException:
        await runner.cleanup()
        raise
    state.served = served
    startup.mark("ready")
    # the start-up line: at the first /health 200 (with that phase), or soon after if nobody asks
    loop.call_later(READY_LINE_DELAY_S, startup.current().log_once)
    logger.info("serving %s on http://%s:%d (OpenAI API at /v1)", ", ".join(n for m in served.models for n in m.names),
                host, port)
    profile_path = os.environ.get("PAGEDSERVE_FRONTEND_PROFILE")  # cProfile of the HTTP process while serving
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    await stop.wait()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile_path)
        logger.info("frontend profile written to %s", profile_path)

    # drain: refuse new work, let in-flight requests finish, then stop the engines
    state.draining = True
    await site.stop()
    deadline = time.monotonic() + args.shutdown_timeout
    if state.in_flight:
        logger.info("draining %d in-flight request(s) for up to %.0f s", state.in_flight, args.shutdown_timeout)
    while state.in_flight and time.monotonic() < deadline and signals["count"] < 2:
        await asyncio.sleep(0.05)
    if state.in_flight:
        logger.warning("aborting %d request(s) still running after the drain timeout", state.in_flight)
    from pagedserve.engine.async_engine import RequestAbortedError

    for eng in served.engines:
        eng.abort_all(RequestAbortedError("the server is shutting down"))
    await runner.cleanup()
    await asyncio.gather(*(eng.shutdown() for eng in served.engines), return_exceptions=True)
    logger.info("server stopped")
    return 0


def run_server(args: argparse.Namespace, early: CoreProcess | None = None) -> int:
    """Validate, bind, resolve the models and start the engines, serve until SIGTERM/SIGINT.
    ``early``: an engine-core process started before the flags were read (``main``)."""
    from pagedserve.entrypoints.openai.cli_serve import prepare_models

    startup.begin("serve").mark("imports")  # the interpreter and the server's imports
    try:
        prepared = prepare_models(args)  # fails fast (unsupported flags, a missing path) before the port is bound
        startup.mark("validate")
        sock = bind_socket(args.host, args.port)
    except BaseException:
        if early is not None:
            early.close(wait=False)
        raise
    startup.mark("bind")
    processes = _start_core_processes(args, len(prepared), early)
    try:
        import uvloop  # optional: a faster event loop

        loop_factory = uvloop.new_event_loop if not args.no_uvloop else None
    except ImportError:
        loop_factory = None
    logger.info("event loop: %s", "uvloop" if loop_factory is not None else "asyncio")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(args, prepared, sock, processes))


def _start_core_processes(args: argparse.Namespace, n: int, early: CoreProcess | None = None) -> list[Any]:
    """One engine-core process per model (the first one may be ``early``), started now: each imports
    the engine (torch, the model code, CUDA) while this process resolves the models and loads their
    tokenizers."""
    from pagedserve.engine.core_client import CoreProcess

    level = logging.getLevelName(logging.getLogger().level)
    level = level if isinstance(level, str) else "INFO"
    out = []
    if early is not None:
        early.log_level, early.core_factory = level, args.engine_core_factory
        out.append(early)
    out += [CoreProcess(level, args.engine_core_factory) for _ in range(n - len(out))]
    startup.mark("core_spawn")
    return out


def report_fatal(message: str, prog: str = "pagedserve serve") -> None:
    """The last line of stderr, and the container's termination message (Kubernetes shows it in the
    pod status: ``lastState.terminated.message``) when ``/dev/termination-log`` exists or
    ``$PAGEDSERVE_TERMINATION_LOG`` names a file."""
    line = f"{prog}: error: {message}"
    path = os.environ.get("PAGEDSERVE_TERMINATION_LOG") or (TERMINATION_LOG if os.path.exists(TERMINATION_LOG)
                                                            else None)
    if path:
        try:
            with open(path, "w") as fh:
                fh.write(message[:4000])  # Kubernetes keeps at most 4096 bytes
        except OSError as e:
            logger.warning("cannot write the termination message to %s: %s", path, e.strerror)
    sys.stderr.flush()
    print(line, file=sys.stderr, flush=True)


def serve_main(args: argparse.Namespace, early: CoreProcess | None = None) -> int:
    """run_server with every start error reported by :func:`report_fatal` (exit 2: bad input, 1: other)."""
    try:
        return run_server(args, early)
    except (ValueError, FileNotFoundError) as e:
        report_fatal(str(e))
        return 2
    except RuntimeError as e:  # an engine failed to start
        report_fatal(str(e))
        return 1
    except Exception as e:  # a bug: keep the traceback in the log, the message as the last line
        logger.exception("the server failed")
        report_fatal(f"{type(e).__name__}: {e}")
        return 1


def main(argv: list[str] | None = None) -> int:
    from pagedserve.engine.core_client import CoreProcess

    # the engine-core process first: it imports torch and the engine while this process imports the
    # flags' modules (torch too) and reads the model's config and tokenizer (docs/startup.md)
    early = CoreProcess()
    try:
        from pagedserve.entrypoints.openai.cli_serve import make_parser

        parser = make_parser()
        args = parser.parse_args(argv)
    except BaseException:  # --help, a bad flag
        early.close(wait=False)
        raise
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve_main(args, early)


if __name__ == "__main__":
    sys.exit(main())
