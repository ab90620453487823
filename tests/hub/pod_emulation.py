"""Run a container spec as a local process, the way the kubelet / compose would start it, for the
"operator's exact container args" tests.

What is kept exactly: the command and args (Kubernetes ``$(VAR)`` references expanded from the
container's env, as the kubelet does), the env (``valueFrom.secretKeyRef`` filled from the test's
stand-in secrets), the image's ``ENV`` (parsed from ``Dockerfile.runtime``). What is mapped, as a
container runtime maps it: every volume mount path (and the image's home) to a temp directory;
``python`` to this interpreter; container port 8000 to a free loopback port (``--port=P`` appended);
``/dev/termination-log`` to a file (``PAGEDSERVE_TERMINATION_LOG``). Added: ``HF_ENDPOINT`` (the fake
Hub stands in for the real one) and ``PYTHONPATH`` (the image has the package installed).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE_HOME = "/home/pagedserve"


@dataclass
class ContainerSpec:
    name: str
    command: list[str]
    args: list[str]
    env: list[dict[str, Any]]
    mounts: list[str]


def image_env(dockerfile: str = os.path.join(ROOT, "Dockerfile.runtime")) -> dict[str, str]:
    """The ``ENV`` of the Dockerfile's last stage (``KEY=VALUE`` pairs; ``$VAR`` references dropped)."""
    with open(dockerfile) as fh:
        text = fh.read().replace("\\\n", " ")
    stages = re.split(r"^FROM\s", text, flags=re.M)
    env: dict[str, str] = {}
    for line in stages[-1].splitlines():
        if line.strip().startswith("ENV "):
            for part in shlex.split(line.strip()[4:]):
                k, sep, v = part.partition("=")
                if sep and "$" not in v:
                    env[k] = v
    return env


def image_entrypoint(dockerfile: str = os.path.join(ROOT, "Dockerfile.runtime")) -> list[str]:
    import json

    with open(dockerfile) as fh:
        lines = [ln for ln in fh if ln.startswith("ENTRYPOINT ")]
    return json.loads(lines[-1][len("ENTRYPOINT "):])


def expand_k8s(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of command/args (``$$(`` escapes; unknown names stay)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


class Pod:
    """One running container: ``start()``, ``wait_ready()``, ``stop()``; ``log()`` and ``termination()``."""

    def __init__(self, spec: ContainerSpec, root: str, secrets: dict[tuple[str, str], str], hub_url: str,
                 port: int, volumes: dict[str, str] | None = None) -> None:
        self.spec, self.root, self.port = spec, root, port
        os.makedirs(root, exist_ok=True)
        self.paths = {m: (volumes or {}).get(m) or os.path.join(root, "vol" + m.replace("/", "_")) for m in spec.mounts}
        self.paths.setdefault(IMAGE_HOME, os.path.join(root, "home"))
        for p in self.paths.values():
            os.makedirs(p, exist_ok=True)
        self.termination_log = os.path.join(root, "termination-log")
        env = {k: self.remap(v) for k, v in image_env().items() if k not in ("PATH",)}
        for item in spec.env:
            if "value" in item:
                env[item["name"]] = self.remap(expand_k8s(str(item["value"]), env))
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                value = secrets.get((ref["name"], ref["key"]))
                if value is None and not ref.get("optional"):
                    raise KeyError(f"{spec.name}: secret {ref['name']}/{ref['key']} is not provided")
                if value is not None:
                    env[item["name"]] = value
        self.env = {**env, "PATH": os.environ.get("PATH", ""), "HF_ENDPOINT": hub_url,
                    "PYTHONPATH": os.path.join(ROOT, "runtime"), "PAGEDSERVE_TERMINATION_LOG": self.termination_log}
        command = [sys.executable if c == "python" else c for c in spec.command]
        self.argv = [expand_k8s(a, env) for a in command + spec.args] + [f"--port={port}"]
        self.argv = [self.remap(a) for a in self.argv]
        self.log_path = os.path.join(root, "pod.log")
        self.proc: subprocess.Popen | None = None

    def remap(self, value: str) -> str:
        """A container path (``/model-cache/x``, ``--model=/mnt/models/m``) -> its temp directory."""
        for mount in sorted(self.paths, key=len, reverse=True):
            value = re.sub(rf"(^|=){re.escape(mount)}(?=/|$)", lambda m: m.group(1) + self.paths[mount], value)
        return value

    def start(self) -> "Pod":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.paths[IMAGE_HOME])
        return self

    def log(self) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def termination(self) -> str | None:
        return open(self.termination_log).read() if os.path.exists(self.termination_log) else None

    def wait_ready(self, timeout: float) -> bool:
        """True once /health is 200; False when the process exited first."""
        import http.client

        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{self.spec.name}: not ready in {timeout} s:\n{self.log()[-3000:]}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode
