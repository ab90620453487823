"""SIGTERM drains in-flight requests (bounded by --shutdown-timeout) and exits 0."""
from __future__ import annotations

import http.client
import json
import os
import signal
import time

from tests.conftest import ROOT
from tests.server.server_proc import COMMON_ARGS, ServerProc, StreamReader, request
from tests.server.slow_core import FACTORY as SLOW_CORE

DRAIN_S = 4


def _startup_statuses(srv: ServerProc, timeout: float = 240.0) -> list:
    """Poll /health from process start until 200: [(status, error code), ...] in order, deduplicated."""
    seen: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert srv.proc.poll() is None, srv.log_text()[-3000:]
        try:
            status, body = request(srv, "GET", "/health", timeout=5)
        except OSError:
            status, body = None, None
        item = (status, body["error"]["code"] if isinstance(body, dict) else None)
        if not seen or seen[-1] != item:
            seen.append(item)
        if status == 200:
            return seen
        time.sleep(0.05)
    raise TimeoutError(seen)


def test_sigterm_drains_then_exits(tmp_path_factory):
    log = tmp_path_factory.mktemp("drain") / "server.log"
    trace = log.parent / "steps.json"  # PAGEDSERVE_STEP_TRACE: the core writes its per-step trace at exit
    # the real model, with every step lasting >= 50 ms: the long request (480 tokens) needs >= 24 s, so
    # it is still running when the 4 s drain ends, however fast the machine
    srv = ServerProc(COMMON_ARGS + ["--shutdown-timeout", str(DRAIN_S), "--max-num-seqs", "4",
                                    "--engine-core-factory", SLOW_CORE], str(log),
                     env={"PAGEDSERVE_STEP_TRACE": str(trace), "PAGEDSERVE_TEST_STEP_MS": "50",
                          "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))})
    try:
        seen = _startup_statuses(srv)
        # the port answers while the model loads: 503 "starting", then 200 (never a hanging connection)
        assert (503, "starting") in seen and seen[-1] == (200, None), seen
        srv.remember_children()
        short = StreamReader(srv.port, {"prompt": "One, two,", "max_tokens": 2, "ignore_eos": True, "stream": True})
        long = StreamReader(srv.port, {"prompt": "Tell me everything.", "max_tokens": 480, "ignore_eos": True,
                                       "stream": True})
        long.start()
        assert long.first_token.wait(120) and long.error is None, long.error
        short.start()
        assert short.first_token.wait(120) and short.error is None, short.error
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        short.join(60)
        assert short.error is None and short.events[-1] == "[DONE]"
        assert all("choices" in e for e in short.events[:-1]), (short.events, srv.log_text()[-3000:])
        finishes = [e["choices"][0]["finish_reason"] for e in short.events[:-1] if e["choices"][0]["finish_reason"]]
        assert finishes == ["length"]  # the in-flight request completed normally during the drain
        long.join(60)
        assert long.error is None and long.events[-1] == "[DONE]", long.events[-3:]
        assert "error" in long.events[-2] and "shutting down" in long.events[-2]["error"]["message"]
        assert long.events[-2]["error"]["code"] == "shutting_down"  # the code docs/server.md states
        code = srv.proc.wait(60)
        elapsed = time.monotonic() - t0
        assert code == 0, srv.log_text()[-3000:]
        assert DRAIN_S - 0.5 <= elapsed <= DRAIN_S + 30, elapsed  # waited for the drain timeout, then stopped
        # nothing listens any more, and the engine core is gone too
        try:
            http.client.HTTPConnection("127.0.0.1", srv.port, timeout=2).request("GET", "/health")
            raise AssertionError("server still listening")
        except ConnectionRefusedError:
            pass
        assert not srv.leftover_children()
        rows = json.loads(trace.read_text())
        # [start, launched, done ms, tokens, requests, path]: both requests' prompts and decode steps
        assert len(rows) >= 3 and all(r[0] <= r[1] <= r[2] for r in rows), rows[:5]
        assert max(r[4] for r in rows) == 2 and all(r[3] >= 1 for r in rows), rows[:5]
        assert {r[5] for r in rows} <= {"eager", "piecewise", "decode-graph"}, rows[:5]
    finally:
        srv.stop()
