"""The wire between the HTTP process and the engine-core process.

Two socket pairs connect the processes (frontend → core: requests; core → frontend: outputs).
Every message is one length-prefixed pickle of plain data (token ids, ``SamplingParams``, tuples,
``SchedulerStats``); nothing holds a tensor (an image's pixels travel as a numpy array).

frontend → core::
    ("config", EngineConfig, core_factory, log_level)
                                              first: the process starts before the model is resolved
    ("batch", [add, ...], [abort_id, ...])   add = (request_id, prompt_token_ids, SamplingParams,
                                              eos_token_ids, arrival_time, priority, max_tokens,
                                              LoRARequest | None, [MultiModalFeature])
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

import pickle
import queue
import socket
import struct
import threading
from typing import Any

HDR = struct.Struct("!Q")
_PICKLE = pickle.HIGHEST_PROTOCOL


def frame(obj: Any) -> bytes:
    payload = pickle.dumps(obj, protocol=_PICKLE)
    return HDR.pack(len(payload)) + payload


class EngineDeadError(RuntimeError):
    """The engine core process is gone (crashed, killed, or failed to start)."""


class FrameReader:
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
        while n - pos >= HDR.size:
            (size,) = HDR.unpack_from(self.buf, pos)
            if n - pos - HDR.size < size:
                break
            start = pos + HDR.size
            msgs.append(pickle.loads(self.buf[start:start + size]))
            pos = start + size
        if pos:
            del self.buf[:pos]
        return msgs


class FrameWriter(threading.Thread):
    """Sends queued frames so the step loop never blocks on a slow reader."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(name="engine-core-writer", daemon=True)
        self.sock = sock
        self.q: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.broken = False

    def send(self, obj: Any) -> None:
        self.q.put(frame(obj))

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
