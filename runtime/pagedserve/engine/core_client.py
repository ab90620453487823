"""The frontend's side of the engine-core process: starts it and exchanges messages with it on
the HTTP process's asyncio event loop (the messages are listed in ``core_wire.py``)."""
from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import time
from typing import Any, Callable

from pagedserve.engine.core_proc import run_engine_core
from pagedserve.engine.core_wire import HDR, EngineDeadError, frame

logger = logging.getLogger(__name__)


class CoreProcess:
    """An engine-core process started ahead of its config: it imports the engine while the frontend
    imports its own modules, resolves the model and loads the tokenizer, then waits for
    ``("config", EngineConfig, core_factory, log_level)`` (``configure``, or ``EngineCoreClient.start``)."""

    def __init__(self, log_level: str = "INFO", core_factory: str | None = None) -> None:
        import multiprocessing as mp

        from pagedserve.spawn import spawn_children

        self.log_level, self.core_factory = log_level, core_factory  # sent with the config: may change
        ctx = mp.get_context("spawn")
        self.fe_in, core_in = socket.socketpair()  # frontend → core
        self.fe_out, core_out = socket.socketpair()  # core → frontend
        self.proc = ctx.Process(target=run_engine_core, name="pagedserve-engine-core",
                                args=(core_in, core_out, log_level, core_factory), daemon=True)
        with spawn_children():  # the child need not re-import the server's __main__ (aiohttp, handlers)
            self.proc.start()
        core_in.close()  # only the child holds its ends: its death reads as EOF here
        core_out.close()
        self.configured = False

    def configure(self, config: Any) -> None:
        """Send the config now (blocking; any thread): the core builds the model while this process
        goes on (loading the tokenizer)."""
        self.fe_in.sendall(frame(("config", config, self.core_factory, self.log_level)))
        self.configured = True

    def close(self, wait: bool = True) -> None:
        """Never configured (the server failed or stopped first): closing the sockets ends the process
        once its imports are done; ``wait=False`` (nothing was sent): terminate it now."""
        for s in (self.fe_in, self.fe_out):
            s.close()
        if wait:
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


class EngineCoreClient:
    """Starts the core process and exchanges messages with it on the frontend's event loop.

    Adds and aborts issued during one event-loop iteration go out as one message.
    """

    def __init__(self, config: Any, on_step: Callable[..., None], on_stats: Callable[[Any], None],
                 on_rejected: Callable[[list], None], on_dead: Callable[[str], None],
                 log_level: str = "INFO", core_factory: str | None = None,
                 process: CoreProcess | None = None) -> None:
        self.config = config
        self.core_factory = core_factory
        self.on_step, self.on_stats, self.on_rejected, self.on_dead = on_step, on_stats, on_rejected, on_dead
        self.log_level = log_level
        self._process = process  # started earlier (the server starts it before resolving the model)
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
        self._loop = asyncio.get_running_loop()
        cp = self._process or CoreProcess(self.log_level, self.core_factory)
        self._process = None
        self.proc = cp.proc
        # keep all four stream objects: a collected StreamWriter closes its transport
        self._in_reader, self._writer = await asyncio.open_connection(sock=cp.fe_in)
        self._reader, self._out_writer = await asyncio.open_connection(sock=cp.fe_out, limit=1 << 24)
        if not cp.configured:
            self._send(("config", self.config, self.core_factory, self.log_level))
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
            if self._process is not None:  # started ahead, never configured
                await asyncio.to_thread(self._process.close)
                self._process = None
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
            self._writer.write(frame(obj))
        except (ConnectionError, RuntimeError) as e:
            self._mark_dead(f"lost the connection to the engine core: {e}")

    # -- outputs --------------------------------------------------------------------------------
    async def _read(self) -> Any:
        assert self._reader is not None
        hdr = await self._reader.readexactly(HDR.size)
        (size,) = HDR.unpack(hdr)
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
                            err = msg[3]  # "ValueError: ..." for bad input (a LoRA adapter), else a failure
                            fut.set_exception(ValueError(err.removeprefix("ValueError: "))
                                              if err.startswith("ValueError: ") else RuntimeError(err))
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
