"""The engine core in its own process, and the asyncio client the HTTP process talks to it with.

Two socket pairs connect the processes (frontend → core: requests; core → frontend: outputs).
Every message is one length-prefixed pickle of plain data (token ids, ``SamplingParams``, tuples,
``SchedulerStats``); nothing holds a tensor.

The core process runs a busy loop: while it has work it drains whatever input has arrived
(without waiting), steps, and queues **one** message per step carrying every request's new
tokens; with no work it blocks on the input socket. A writer thread sends the queued messages,
so the step loop never waits for the frontend to read.

frontend → core::
    ("batch", [add, ...], [abort_id, ...])   add = (request_id, prompt_token_ids, SamplingParams,
                                              eos_token_ids, arrival_time, priority, max_tokens)
    ("call", call_id, method, args)           a method of EngineCore (utility / tests)
    ("shutdown",)
core → frontend::
    ("ready", info) | ("startup_error", message)
    ("step", [out, ...], SchedulerStats | None, t_step_start, t_step_end)
                                             out = (request_id, new_token_ids, finish_reason,
                                                    {other EngineCoreOutput fields} | None,
                                                    first_scheduled_time | None)
    ("stats", SchedulerStats)                after input was handled while idle
    ("rejected", [(request_id, message), ...])
    ("reply", call_id, ok, result)
    ("fatal", message)                       the step loop crashed; the process exits
"""
from __future__ import annotations

import asyncio
import logging
import os
import pickle
import queue
import select
import signal
import socket
import struct
import threading
import time
import traceback
from typing import Any, Callable

logger = logging.getLogger(__name__)

_HDR = struct.Struct("!Q")
STATS_INTERVAL_S = 0.05  # scheduler stats ride on step messages at most this often (and when idle)
_PICKLE = pickle.HIGHEST_PROTOCOL


def _frame(obj: Any) -> bytes:
    payload = pickle.dumps(obj, protocol=_PICKLE)
    return _HDR.pack(len(payload)) + payload


class EngineDeadError(RuntimeError):
    """The engine core process is gone (crashed, killed, or failed to start)."""


# ============================================================================================
# core process side
# ============================================================================================
class _FrameReader:
    """Non-blocking reader of length-prefixed frames from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def read_available(self) -> list[Any]:
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
        msgs = []
        pos, n = 0, len(self.buf)
        while n - pos >= _HDR.size:
            (size,) = _HDR.unpack_from(self.buf, pos)
            if n - pos - _HDR.size < size:
                break
            start = pos + _HDR.size
            msgs.append(pickle.loads(self.buf[start:start + size]))
            pos = start + size
        if pos:
            del self.buf[:pos]
        return msgs


class _Writer(threading.Thread):
    """Sends queued frames so the step loop never blocks on a slow reader."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(name="engine-core-writer", daemon=True)
        self.sock = sock
        self.q: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.broken = False

    def send(self, obj: Any) -> None:
        self.q.put(_frame(obj))

    def run(self) -> None:
        while True:
            data = self.q.get()
            if data is None:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.broken = True  # the frontend is gone; the main loop notices EOF on input
                return

    def close(self, timeout: float = 5.0) -> None:
        self.q.put(None)
        self.join(timeout)


class EngineCoreProc:
    """The loop of the engine-core process."""

    def __init__(self, core: Any, in_sock: socket.socket, writer: _Writer) -> None:
        from pagedserve.engine.request import Request

        self._Request = Request
        self.core = core
        self.reader = _FrameReader(in_sock)
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
        for rid, ids, params, eos, arrival, priority, max_tokens in adds:
            try:
                self.core.add_request(Request(rid, ids, params, eos_token_ids=eos, arrival_time=arrival,
                                              priority=priority, max_tokens=max_tokens))
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


def run_engine_core(config: Any, in_sock: socket.socket, out_sock: socket.socket, log_level: str = "INFO",
                    core_factory: str | None = None) -> None:
    """Entry point of the engine-core process (multiprocessing 'spawn')."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the frontend decides when the core stops
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s [core]: %(message)s")
    writer = _Writer(out_sock)
    writer.start()
    try:
        core = _load_factory(core_factory)(config, use_tqdm=False)
    except BaseException as e:
        logger.exception("engine core failed to start")
        writer.send(("startup_error", f"{type(e).__name__}: {e}"))
        writer.close()
        os._exit(1)
    writer.send(("ready", _core_info(core)))
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
    try:
        if hasattr(core, "shutdown"):
            core.shutdown()  # tensor-parallel worker processes, if any
    except Exception:
        logger.exception("engine core shutdown failed")
    os._exit(code)  # skip interpreter teardown (CUDA contexts, daemon threads)


# ============================================================================================
# frontend side
# ============================================================================================
class EngineCoreClient:
    """Starts the core process and exchanges messages with it on the frontend's event loop.

    Adds and aborts issued during one event-loop iteration go out as one message.
    """

    def __init__(self, config: Any, on_step: Callable[..., None], on_stats: Callable[[Any], None],
                 on_rejected: Callable[[list], None], on_dead: Callable[[str], None],
                 log_level: str = "INFO", core_factory: str | None = None) -> None:
        self.config = config
        self.core_factory = core_factory
        self.on_step, self.on_stats, self.on_rejected, self.on_dead = on_step, on_stats, on_rejected, on_dead
        self.log_level = log_level
        self.proc: Any = None
        self.info: dict[str, Any] = {}
        self.dead: str | None = None
        self._adds: list[tuple] = []
        self._aborts: list[str] = []
        self._flush_scheduled = False
        self._calls: dict[int, asyncio.Future] = {}
        self._call_ids = 0
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, timeout: float = 1800.0) -> dict[str, Any]:
        import multiprocessing as mp

        self._loop = asyncio.get_running_loop()
        ctx = mp.get_context("spawn")
        fe_in, core_in = socket.socketpair()  # frontend → core
        fe_out, core_out = socket.socketpair()  # core → frontend
        self.proc = ctx.Process(target=run_engine_core, name="pagedserve-engine-core",
                                args=(self.config, core_in, core_out, self.log_level, self.core_factory),
                                daemon=True)
        self.proc.start()
        core_in.close()  # only the child holds its ends: its death reads as EOF here
        core_out.close()
        # keep all four stream objects: a collected StreamWriter closes its transport
        self._in_reader, self._writer = await asyncio.open_connection(sock=fe_in)
        self._reader, self._out_writer = await asyncio.open_connection(sock=fe_out, limit=1 << 24)
        try:
            msg = await asyncio.wait_for(self._read(), timeout)
        except asyncio.TimeoutError:
            self.kill()
            raise EngineDeadError(f"the engine core did not start within {timeout:.0f} s") from None
        except (asyncio.IncompleteReadError, ConnectionError):
            self.proc.join(5)
            raise EngineDeadError(f"the engine core process exited during startup "
                                  f"(exit code {self.proc.exitcode}); see its log above") from None
        if msg[0] == "startup_error":
            self.proc.join(10)
            raise EngineDeadError(f"the engine core failed to start: {msg[1]}")
        assert msg[0] == "ready", msg
        self.info = msg[1]
        self._task = asyncio.create_task(self._output_loop(), name="engine-core-output")
        return self.info

    def is_alive(self) -> bool:
        return self.dead is None and self.proc is not None and self.proc.is_alive()

    async def shutdown(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        self._closing = True
        if self.dead is None and self._writer is not None and not self._writer.is_closing():
            self._send(("shutdown",))
        deadline = time.monotonic() + timeout
        while self.proc.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.is_alive():
            logger.warning("engine core did not exit in %.0f s; terminating it", timeout)
            self.kill()
        if self._task is not None:
            self._task.cancel()
        for w in (self._writer, getattr(self, "_out_writer", None)):
            if w is not None:
                w.close()
        self.dead = self.dead or "engine core shut down"

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)

    # -- requests -------------------------------------------------------------------------------
    def add_request(self, req: tuple) -> None:
        self._adds.append(req)
        self._schedule_flush()

    def abort(self, request_ids: list[str]) -> None:
        if request_ids:
            self._aborts.extend(request_ids)
            self._schedule_flush()

    async def call(self, method: str, *args: Any, timeout: float = 60.0) -> Any:
        if self.dead:
            raise EngineDeadError(self.dead)
        self._call_ids += 1
        fut = asyncio.get_running_loop().create_future()
        self._calls[self._call_ids] = fut
        self._send(("call", self._call_ids, method, args))
        return await asyncio.wait_for(fut, timeout)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._adds and not self._aborts:
            return
        adds, aborts = self._adds, self._aborts
        self._adds, self._aborts = [], []
        if self.dead is None:
            self._send(("batch", adds, aborts))

    def _send(self, obj: Any) -> None:
        try:
            assert self._writer is not None
            self._writer.write(_frame(obj))
        except (ConnectionError, RuntimeError) as e:
            self._mark_dead(f"lost the connection to the engine core: {e}")

    # -- outputs --------------------------------------------------------------------------------
    async def _read(self) -> Any:
        assert self._reader is not None
        hdr = await self._reader.readexactly(_HDR.size)
        (size,) = _HDR.unpack(hdr)
        return pickle.loads(await self._reader.readexactly(size))

    async def _output_loop(self) -> None:
        try:
            while True:
                msg = await self._read()
                kind = msg[0]
                if kind == "step":
                    self.on_step(msg[1], msg[2], msg[3], msg[4])
                elif kind == "stats":
                    self.on_stats(msg[1])
                elif kind == "rejected":
                    self.on_rejected(msg[1])
                elif kind == "reply":
                    fut = self._calls.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        if msg[2]:
                            fut.set_result(msg[3])
                        else:
                            fut.set_exception(RuntimeError(msg[3]))
                elif kind == "fatal":
                    self._mark_dead(f"the engine core crashed: {msg[1]}")
                    return
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            logger.debug("engine core connection closed: %r", e)
            if self._closing:
                self._mark_dead("engine core shut down", quiet=True)
                return
            code = None
            if self.proc is not None:
                self.proc.join(1)
                code = self.proc.exitcode
            self._mark_dead(f"the engine core process died (exit code {code})")
        except Exception as e:  # a bug in output handling must not leave requests hanging
            logger.exception("error while handling engine-core outputs")
            self._mark_dead(f"frontend output handling failed: {type(e).__name__}: {e}")
            self.kill()

    def _mark_dead(self, reason: str, quiet: bool = False) -> None:
        if self.dead is not None:
            return
        self.dead = reason
        (logger.info if quiet else logger.error)("%s", reason)
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(EngineDeadError(reason))
        self._calls.clear()
        self.on_dead(reason)
