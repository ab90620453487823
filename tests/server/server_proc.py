"""A real ``pagedserve`` server in a subprocess on a free loopback port, plus small HTTP helpers
(stdlib only, so the tests check exactly what goes over the wire)."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

KV_CACHE_BYTES = 64 << 20  # ~90 blocks of 16 tokens for SmolLM2 in fp32: fast to allocate
COMMON_ARGS = ["--max-model-len", "512", "--kv-cache-memory", str(KV_CACHE_BYTES), "--seed", "0",
               "--max-num-batched-tokens", "512", "--shutdown-timeout", "10"]
START_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProc:
    def __init__(self, args: list[str], log_path: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.cmd = [sys.executable, "-m", "pagedserve.entrypoints.openai.api_server", "--host", "127.0.0.1",
                    "--port", str(self.port), *args]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> "ServerProc":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                status, _ = request(self, "GET", "/health", timeout=2)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"server not ready in {timeout} s:\n{self.log_text()[-4000:]}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in self.leftover_children(wait=5.0):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
        return self.proc.returncode

    def children(self) -> list[int]:
        """Direct children of the server process (engine cores, resource tracker)."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as fh:
                return [int(x) for x in fh.read().split()]
        except OSError:
            return []

    def engine_core_pids(self) -> list[int]:
        out = []
        for pid in self.children():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ")
            except OSError:
                continue
            if b"spawn_main" in cmd and b"resource_tracker" not in cmd:
                out.append(pid)
        return out

    def leftover_children(self, wait: float = 10.0) -> list[int]:
        """Children seen while the server ran that are still alive (zombies do not count)."""
        seen = getattr(self, "_children_seen", set())
        deadline = time.monotonic() + wait
        while True:
            alive = [p for p in seen if _alive(p)]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.1)

    def remember_children(self) -> None:
        self._children_seen = set(self.children())


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def request(server: Any, method: str, path: str, body: Any = None, headers: dict | None = None,
            timeout: float = 120.0, raw: bytes | None = None) -> tuple[int, Any]:
    """One HTTP request; returns (status, parsed JSON or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        ctype = resp.getheader("Content-Type", "")
        if "application/json" in ctype:
            return resp.status, json.loads(payload)
        return resp.status, payload.decode("utf-8", "replace")
    finally:
        conn.close()


def post(server: Any, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
    return request(server, "POST", path, body, **kw)


class StreamReader(threading.Thread):
    """Streams one completion; records the SSE payloads and when the first token arrived."""

    def __init__(self, port: int, body: dict, headers: dict | None = None) -> None:
        super().__init__(daemon=True)
        self.port, self.body, self.headers = port, body, headers or {}
        self.events: list = []
        self.first_token = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            conn.request("POST", "/v1/completions", json.dumps(self.body),
                         {"Content-Type": "application/json", **self.headers})
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            buf = b""
            while True:
                chunk = resp.read1(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    data = block.decode()[len("data: "):]
                    self.events.append(data if data == "[DONE]" else json.loads(data))
                    if data != "[DONE]" and self.events[-1].get("choices") and self.events[-1]["choices"][0].get("text"):
                        self.first_token.set()
            conn.close()
        except BaseException as e:  # noqa: BLE001 — reported by the test
            self.error = e
            self.first_token.set()


def sse_events(text: str) -> list[Any]:
    """Parse an SSE body into JSON payloads; the final '[DONE]' is returned as the string."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        block = block.strip()
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def metrics(server: Any) -> dict[str, float]:
    """/metrics as {'name{labels}': value}."""
    status, text = request(server, "GET", "/metrics", timeout=30)
    assert status == 200
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


def metric(server: Any, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in metrics(server).items():
        base = key.split("{", 1)[0]
        if base != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


def wait_for(pred: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached in {timeout} s (last: {last!r})")
