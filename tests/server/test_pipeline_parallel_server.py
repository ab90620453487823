"""`pagedserve serve --pipeline-parallel-size 2`: the real server starts SmolLM2 in two pipeline
stages (the engine core is the last stage, one spawned worker the first), answers a completion
with the same tokens as one process, and when the stage worker is killed the next request fails
with an error naming it (no hang) and /health turns 503."""
from __future__ import annotations

import os
import signal
import time

from tests.server.conftest import start_server
from tests.server.server_proc import post, request, wait_for

BODY = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def test_pp2_server_answers_and_a_killed_stage_fails_cleanly(tmp_path_factory, server):
    status, ref = post(server, "/v1/completions", BODY)  # the shared single-process server
    assert status == 200
    srv = start_server(tmp_path_factory, "pp2", ["--pipeline-parallel-size", "2", "--max-num-seqs", "4"])
    try:
        assert "pipeline stages 2: 2 ranks (gloo)" in srv.log_text()
        status, body = post(srv, "/v1/completions", BODY)
        assert status == 200, body
        assert body["choices"][0]["text"] == ref["choices"][0]["text"]
        assert "Paris" in body["choices"][0]["text"]
        (core,) = srv.engine_core_pids()
        stage_workers = [p for p in _children(core) if b"spawn_main" in open(f"/proc/{p}/cmdline", "rb").read()
                         and b"resource_tracker" not in open(f"/proc/{p}/cmdline", "rb").read()]
        assert len(stage_workers) == 1
        os.kill(stage_workers[0], signal.SIGKILL)
        t0 = time.monotonic()
        status, body = post(srv, "/v1/completions", BODY, timeout=60)
        assert status >= 500 and time.monotonic() - t0 < 45, (status, body)
        wait_for(lambda: request(srv, "GET", "/health")[0] == 503, 30, what="/health to fail")
        assert "worker rank 1" in srv.log_text()
    finally:
        srv.stop()
