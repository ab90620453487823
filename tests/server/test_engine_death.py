"""The engine-core process dies mid-stream (SIGKILL by pid): every open request ends with an error
(streams: an error event then [DONE]; non-streaming: 503), /health turns 503 at once, the running /
waiting gauges drop to 0, new requests get 503, and the HTTP process stays up and exits 0 on SIGTERM.

The core is the model-free fake (``--engine-core-factory``) stepping every 50 ms, so the requests are
still running when it is killed on any hardware."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.server.conftest import start_server
from tests.server.server_proc import StreamReader, metric, post, request, wait_for

FAKE_CORE = "pagedserve.benchmarks.fake_core:FakeEngineCore"
LONG = {"prompt": "Go on and on.", "max_tokens": 400, "ignore_eos": True}  # 400 steps of 50 ms: 20 s


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "engine-death", ["--engine-core-factory", FAKE_CORE, "--max-num-seqs", "2"],
                       env={"PAGEDSERVE_FAKE_STEP_MS": "50"})
    yield srv
    srv.stop()


def _post_in_thread(srv, path: str, body: dict) -> tuple[threading.Thread, list]:
    result: list = []
    t = threading.Thread(target=lambda: result.append(post(srv, path, body, timeout=60)), daemon=True)
    t.start()
    return t, result


def test_engine_core_death(fake_server):
    srv = fake_server
    (core_pid,) = srv.engine_core_pids()
    stream = StreamReader(srv.port, {**LONG, "stream": True})
    stream.start()
    assert stream.first_token.wait(60) and stream.error is None, stream.error
    completion, comp_result = _post_in_thread(srv, "/v1/completions", LONG)
    chat, chat_result = _post_in_thread(srv, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Talk."}], "max_tokens": 400, "ignore_eos": True})
    running = "pagedserve:num_requests_running"
    waiting = "pagedserve:num_requests_waiting"
    # --max-num-seqs 2: two run, the third waits
    wait_for(lambda: metric(srv, running) == 2 and metric(srv, waiting) == 1, 30, what="2 running, 1 waiting")

    t_kill = time.monotonic()
    os.kill(core_pid, signal.SIGKILL)
    stream.join(30)
    completion.join(30)
    chat.join(30)
    assert not stream.is_alive() and stream.error is None, stream.error
    assert stream.events[-1] == "[DONE]" and stream.events[-2]["error"]["code"] == "engine_dead", stream.events[-3:]
    for name, result in (("completion", comp_result), ("chat", chat_result)):
        status, body = result[0]
        assert status == 503 and body["error"]["code"] == "engine_dead", (name, status, body)
    status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(request(srv, "GET", "/health")), 5,
                            interval=0.05, what="/health to fail")
    assert body["error"]["code"] == "engine_dead" and "exit code" in body["error"]["message"], body
    assert time.monotonic() - t_kill < 5.0
    # nothing runs or waits any more (issue 21, defect 6: the gauges kept their old values)
    assert metric(srv, running) == 0 and metric(srv, waiting) == 0
    assert metric(srv, "pagedserve:request_success_total", finished_reason="abort") == 3
    # new work is refused at once, streaming or not
    status, body = post(srv, "/v1/completions", {"prompt": "hi", "max_tokens": 2}, timeout=10)
    assert status == 503 and body["error"]["code"] == "engine_dead", body
    status, body = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                      "stream": True}, timeout=10)
    assert status == 503, body
    assert metric(srv, "pagedserve:request_rejected_total", reason="engine_dead") == 2
    # the HTTP process is still up (it serves /metrics and /v1/models) and stops cleanly on SIGTERM
    assert srv.proc.poll() is None
    assert request(srv, "GET", "/v1/models")[0] == 200
    srv.signal(signal.SIGTERM)
    assert srv.proc.wait(20) == 0, srv.log_text()[-3000:]
    assert not srv.leftover_children()
    assert "Traceback" not in srv.log_text(), srv.log_text()[-3000:]
