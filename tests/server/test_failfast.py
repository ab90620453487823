"""Flags whose features are not built fail fast, with a clear message, before the port is bound
and before any model is loaded; `serve --help` lists vLLM's flags."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.server.server_proc import free_port

CASES = [
    # every refused feature is named in one message
    (["--distributed-executor-backend", "slurm", "--quantization", "bogus", "--max-waiting-requests", "0",
      "--kv-cache-dtype", "int4"],
     ["distributed-executor-backend slurm", "must be mp or ray", "quantization bogus",
      "max-waiting-requests must be >= 1", "kv-cache-dtype int4"]),
    # the default model (SmolLM2-135M) has 30 layers: every pipeline stage needs one
    (["--pipeline-parallel-size", "31"], "pipeline_parallel_size 31 is larger than the model's num_hidden_layers 30"),
    (["--block-size", "7"], "block_size"),
    (["--max-model-len", "100000"], "max_model_len"),
    (["--model", "/nonexistent/model"], "/nonexistent/model"),
    (["--model", "default", "--model", "default"], "used by two models"),
    (["--api-key", " "], "api-key"),
]
VLLM_FLAGS = ["--model", "--served-model-name", "--host", "--port", "--max-model-len", "--gpu-memory-utilization",
              "--max-num-seqs", "--max-num-batched-tokens", "--block-size", "--swap-space",
              "--enable-prefix-caching", "--tensor-parallel-size", "--pipeline-parallel-size", "--dtype",
              "--quantization", "--trust-remote-code", "--enforce-eager", "--seed", "--api-key", "--load-format",
              "--max-waiting-requests", "--kv-cache-dtype", "--distributed-executor-backend"]


def _run_all(cases: list[list[str]], timeout: float = 180) -> list[tuple[int, str, float]]:
    procs = []
    for args in cases:
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, "-m", "pagedserve.entrypoints.openai.api_server", "--host",
                              "127.0.0.1", "--port", str(free_port()), *args], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        procs.append((p, t0))
    out = []
    for p, t0 in procs:
        try:
            text, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            text, _ = p.communicate()
        out.append((p.returncode, text.decode("utf-8", "replace"), time.monotonic() - t0))
    return out


def test_unsupported_and_invalid_flags_fail_fast():
    results = _run_all([args for args, _ in CASES])
    for (args, needles), (code, text, _elapsed) in zip(CASES, results):
        assert code not in (0, None), (args, text[-2000:])
        for needle in [needles] if isinstance(needles, str) else needles:
            assert needle in text, (args, needle, text[-2000:])
        assert "engine core" not in text, (args, "an engine was started", text[-2000:])
        assert "OpenAI API at" not in text


def test_port_in_use_fails_before_loading():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "pagedserve.entrypoints.openai.api_server", "--host", "127.0.0.1",
                            "--port", str(port)], capture_output=True, text=True, timeout=180,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode != 0
    assert "cannot listen on 127.0.0.1" in p.stderr
    assert "engine core" not in p.stderr + p.stdout


@pytest.mark.parametrize("cmd", [["-m", "pagedserve.entrypoints.cli", "serve", "--help"],
                                 ["-m", "pagedserve.entrypoints.openai.api_server", "--help"]])
def test_help_lists_vllm_flags(cmd):
    p = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    missing = [f for f in VLLM_FLAGS if f not in p.stdout]
    assert not missing, missing
