"""The engine core in its own process (``run_engine_core``, started by ``core_client.py``).

The process runs a busy loop: while it has work it drains whatever input has arrived (without
waiting), steps, and queues **one** message per step carrying every request's new tokens; with
no work it blocks on the input socket. A writer thread sends the queued messages, so the step
loop never waits for the frontend to read. The messages are listed in ``core_wire.py``.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
import traceback
from typing import Any, Callable

from pagedserve.engine.core_wire import FrameReader, FrameWriter

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.05  # scheduler stats ride on step messages at most this often (and when idle)


class EngineCoreProc:
    """The loop of the engine-core process."""

    def __init__(self, core: Any, in_sock: socket.socket, writer: FrameWriter) -> None:
        from pagedserve.request import Request

        self._Request = Request
        self.core = core
        self.reader = FrameReader(in_sock)
        self.in_sock = in_sock
        self.writer = writer
        # request id → time it was first scheduled (>= 0), or -1.0 once reported
        self.sched_time: dict[str, float] = {}
        self.stats_time = 0.0  # when scheduler stats were last sent
        self.running = True

    def run(self) -> None:
        core = self.core
        while self.running:
            busy = core.has_unfinished_requests()
            if not busy:
                try:
                    select.select([self.in_sock], [], [])
                except InterruptedError:
                    continue
            msgs = self.reader.read_available()
            if msgs:
                self._handle(msgs)
            if self.reader.eof:
                logger.info("engine core: the frontend closed the connection; exiting")
                return
            if not self.running:
                return
            if core.has_unfinished_requests():
                self._step()
            elif msgs:
                self.writer.send(("stats", core.get_stats()))
                self.stats_time = time.time()

    def _handle(self, msgs: list[Any]) -> None:
        for msg in msgs:
            kind = msg[0]
            if kind == "batch":
                self._add(msg[1])
                if msg[2]:
                    self.core.abort_requests(msg[2])
                    for rid in msg[2]:
                        self.sched_time.pop(rid, None)
            elif kind == "call":
                _, call_id, method, args = msg
                try:
                    result = getattr(self.core, method)(*args)
                    self.writer.send(("reply", call_id, True, result))
                except Exception as e:  # reported to the caller, the loop goes on
                    self.writer.send(("reply", call_id, False, f"{type(e).__name__}: {e}"))
            elif kind == "shutdown":
                self.running = False
            else:
                logger.error("engine core: unknown message %r", kind)

    def _add(self, adds: list[tuple]) -> None:
        rejected = []
        Request = self._Request
        for rid, ids, params, eos, arrival, priority, max_tokens, lora, mm in adds:
            try:
                self.core.add_request(Request(rid, ids, params, eos_token_ids=eos, arrival_time=arrival,
                                              priority=priority, max_tokens=max_tokens, lora_request=lora,
                                              mm_features=mm))
            except ValueError as e:
                rejected.append((rid, str(e)))
        if rejected:
            self.writer.send(("rejected", rejected))

    def _step(self) -> None:
        t0 = time.time()
        outs = self.core.step()
        t1 = time.time()
        st = self.sched_time
        for req in getattr(self.core.scheduler, "running", ()):  # stamp the first scheduling
            if req.request_id not in st:
                st[req.request_id] = t0
        wire = []
        for o in outs:
            rid = o.request_id
            first = st.get(rid, t0)
            if first >= 0:
                st[rid] = -1.0
            else:
                first = None
            if o.finish_reason is not None:
                st.pop(rid, None)
            wire.append((rid, o.new_token_ids, o.finish_reason, _extras(o), first))
        stats = None
        if t1 - self.stats_time >= STATS_INTERVAL_S or not self.core.has_unfinished_requests():
            stats, self.stats_time = self.core.get_stats(), t1
        self.writer.send(("step", wire, stats, t0, t1))


_WIRE_FIELDS = ("request_id", "new_token_ids", "finish_reason")
_other_fields: tuple[tuple[str, Any], ...] = ()
_all_default: Callable[[Any], bool] | None = None


def _extras(o: Any) -> dict[str, Any] | None:
    """An EngineCoreOutput's other fields, only those that differ from their defaults (usually
    none: then just the id, the new tokens and the finish reason travel)."""
    if _all_default is None:
        _compile_default_check(o)
    if _all_default(o):  # type: ignore[misc]
        return None
    extra = {}
    for name, default in _other_fields:
        v = getattr(o, name)
        if v is not default and v != default:
            extra[name] = v
    return extra


def _compile_default_check(o: Any) -> None:
    """Build ``o.a is None and o.b == 0 and ...`` once for the output dataclass's fields."""
    import dataclasses

    global _other_fields, _all_default
    _other_fields = tuple((f.name, None if f.default is dataclasses.MISSING else f.default)
                          for f in dataclasses.fields(o) if f.init and f.name not in _WIRE_FIELDS)
    terms = [f"o.{n} is None" if d is None else f"o.{n} == {d!r}" for n, d in _other_fields]
    ns: dict[str, Any] = {}
    exec(f"def check(o):\n    return {' and '.join(terms) or 'True'}\n", ns)  # noqa: S102 — our own field names
    _all_default = ns["check"]


def _core_info(core: Any) -> dict[str, Any]:
    cfg = core.config
    return {"num_gpu_blocks": cfg.cache_config.num_gpu_blocks, "block_size": cfg.cache_config.block_size,
            "max_model_len": cfg.model_config.max_model_len, "pid": os.getpid(),
            "startup_seconds": getattr(core, "startup_seconds", None)}


def tune_gc(gen0_threshold: int = 10_000) -> None:
    """After startup: move everything allocated so far (model, tokenizer, modules) out of the
    collector's reach, and collect the young generation less often. Full collections over the
    startup heap otherwise stall a busy loop for tens of milliseconds at a time."""
    import gc

    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, g1, g2)


def _load_factory(path: str | None) -> Callable[..., Any]:
    if not path:
        from pagedserve.engine.core import EngineCore

        return EngineCore
    import importlib

    module, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"engine core factory {path!r} must look like 'package.module:callable'")
    return getattr(importlib.import_module(module), attr)


def _read_frame(sock: socket.socket) -> Any:
    """One frame, blocking (the config, before the loop starts); None at EOF."""
    import pickle

    from pagedserve.engine.core_wire import HDR

    def exactly(n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    hdr = exactly(HDR.size)
    if hdr is None:
        return None
    payload = exactly(HDR.unpack(hdr)[0])
    return None if payload is None else pickle.loads(payload)


def _preload_gpu_paths() -> None:
    """While the config is on its way: on a CUDA machine, import the GPU-only modules (Triton, the
    kernels, CUDA graphs, warm-up) and initialise CUDA, which the engine would otherwise do after."""
    import torch

    if not torch.cuda.is_available():
        return
    try:
        import pagedserve.attention.triton_backend  # noqa: F401
        import pagedserve.worker.cuda_graphs  # noqa: F401
        import pagedserve.worker.fusion  # noqa: F401
        import pagedserve.worker.memory  # noqa: F401
        import pagedserve.worker.piecewise_graphs  # noqa: F401
        import pagedserve.worker.warmup  # noqa: F401
    except ImportError:  # no Triton: the engine reports it when it needs it
        pass
    try:
        torch.cuda.init()
    except Exception:  # noqa: BLE001 — the engine reports a broken device itself, if it uses one
        pass


def run_engine_core(in_sock: socket.socket, out_sock: socket.socket, log_level: str = "INFO",
                    core_factory: str | None = None) -> None:
    """Entry point of the engine-core process (multiprocessing 'spawn'). The process is started
    before the frontend has resolved the model (``python -m ...api_server``: before it has even read
    its flags): it imports the engine (torch, the model code) meanwhile, then waits for
    ``("config", EngineConfig, core_factory, log_level)``."""
    from pagedserve import startup

    timeline = startup.begin("core")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the frontend decides when the core stops
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s [core]: %(message)s")
    from pagedserve.utils import thread_lock_for_tqdm

    thread_lock_for_tqdm()
    writer = FrameWriter(out_sock)
    writer.start()
    try:
        factory = _load_factory(core_factory)
        _preload_gpu_paths()
        timeline.mark("imports")
        msg = _read_frame(in_sock)
        if msg is None:  # the frontend went away before sending the config (it failed to start)
            writer.close(1.0)
            os._exit(0)
        kind, config, factory_name, level = msg
        assert kind == "config", kind
        logging.getLogger().setLevel(level)  # the process may have started before the flags were read
        if factory_name != core_factory:
            factory = _load_factory(factory_name)
        timeline.mark("wait_config")
        core = factory(config, use_tqdm=False)
    except BaseException as e:
        logger.exception("engine core failed to start")
        writer.send(("startup_error", f"{type(e).__name__}: {e}"))
        writer.close()
        os._exit(1)
    timeline.mark("ready")
    writer.send(("ready", {**_core_info(core), "startup": timeline.export()}))
    trace_path = os.environ.get("PAGEDSERVE_STEP_TRACE") if hasattr(core, "write_trace") else None
    if trace_path:  # the per-step trace, written at exit
        core.trace = []
    tune_gc()
    in_sock.setblocking(False)
    proc = EngineCoreProc(core, in_sock, writer)
    code = 0
    try:
        proc.run()
    except BaseException as e:
        logger.exception("engine core crashed")
        writer.send(("fatal", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"))
        code = 1
    writer.close()
    if trace_path:
        try:
            core.write_trace(trace_path)
        except OSError as e:
            logger.error("engine core: cannot write the step trace to %s: %s", trace_path, e)
    try:
        if hasattr(core, "shutdown"):
            core.shutdown()  # tensor-parallel worker processes, if any
    except Exception:
        logger.exception("engine core shutdown failed")
    os._exit(code)  # skip interpreter teardown (CUDA contexts, daemon threads)
