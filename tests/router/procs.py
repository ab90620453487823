"""Processes for the router tests: ``pagedserve serve`` replicas and ``pagedserve router``, on loopback."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
from typing import Any

from tests.server.server_proc import COMMON_ARGS, ServerProc, free_port, request

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED_NAME = "chat"  # every replica also answers to this name
# room for 3-turn conversations and their cached prefixes (later flags override COMMON_ARGS)
REPLICA_ARGS = [*COMMON_ARGS, "--max-model-len", "1024", "--max-num-batched-tokens", "1024",
                "--kv-cache-memory", str(96 << 20), "--max-num-seqs", "8"]

# several replicas share the CPU cores: one math thread each (oversubscribed OpenMP threads crawl)
REPLICA_ENV = {"OMP_NUM_THREADS": "1"}


def start_replicas(names: list[str], log_dir: pathlib.Path, extra_args: list[str] = (),
                   env: dict[str, str] | None = None) -> list[ServerProc]:
    """One replica per name (``--served-model-name NAME chat``): the first alone (it converts the
    default model's GGUF into the cache on a cold machine), then the others in parallel."""
    procs: list[ServerProc] = []

    def start(n: str) -> ServerProc:
        procs.append(ServerProc([*REPLICA_ARGS, *extra_args, "--served-model-name", n, SHARED_NAME],
                                str(log_dir / f"{n}.log"), env=REPLICA_ENV if env is None else env))
        return procs[-1]

    try:
        start(names[0]).wait_ready()
        for n in names[1:]:
            start(n)
        for p in procs:
            p.wait_ready()
            p.remember_children()
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return procs


class RouterProc:
    """``python -m pagedserve.router`` in a subprocess (the router image's entry point)."""

    def __init__(self, args: list[str], log_path: pathlib.Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.cmd = [sys.executable, "-m", "pagedserve.router", "--host", "127.0.0.1", "--port", str(self.port),
                    "--health-check-interval", "1", *args]
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": f"{ROOT / 'runtime'}", **(env or {})})

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_models(self, expected: set[str], timeout: float = 30.0, headers: dict | None = None) -> list[dict]:
        """Until /v1/models lists ``expected`` (ids and aliases) and every backend is healthy."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                status, body = request(self, "GET", "/v1/models", headers=headers, timeout=5)
                if status == 200:
                    names = {c["id"] for c in body["data"]} | {a for c in body["data"] for a in c.get("aliases", [])}
                    last = names
                    if expected <= names:
                        return body["data"]
            except OSError as e:
                last = e
            time.sleep(0.2)
        raise TimeoutError(f"router models {last!r} never covered {expected}:\n{self.log_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode
