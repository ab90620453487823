"""A client that goes away mid-request aborts its request: the engine frees its KV blocks
(asserted through /metrics: KV usage back to 0, nothing running, an 'abort' finish counted)."""
from __future__ import annotations

import json
import socket
import time

from tests.server.server_proc import metric, wait_for

MODEL = "SmolLM2-135M-Instruct"


def _raw_post(port: int, path: str, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def _read_until(s: socket.socket, marker: bytes, count: int, timeout: float = 120) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(marker) < count:
        assert time.monotonic() < deadline, buf
        chunk = s.recv(65536)
        assert chunk, buf
        buf += chunk
    return buf


def _idle(server) -> bool:
    return (metric(server, "pagedserve:num_requests_running") == 0
            and metric(server, "pagedserve:num_requests_waiting") == 0
            and metric(server, "pagedserve:kv_cache_usage_perc") == 0)


def test_disconnect_mid_stream_aborts(server):
    wait_for(lambda: _idle(server), 60, what="idle before the test")
    aborted = metric(server, "pagedserve:request_success_total", finished_reason="abort")
    gen_before = metric(server, "pagedserve:generation_tokens_total")
    s = _raw_post(server.port, "/v1/completions", {"prompt": "Tell me a long story.", "max_tokens": 400,
                                                   "ignore_eos": True, "stream": True})
    _read_until(s, b"data: ", 3)  # a few tokens are out: the request holds KV blocks now
    assert metric(server, "pagedserve:kv_cache_usage_perc") > 0
    s.close()
    wait_for(lambda: _idle(server), 60, what="blocks freed after the disconnect")
    assert metric(server, "pagedserve:request_success_total", finished_reason="abort") == aborted + 1
    assert metric(server, "pagedserve:generation_tokens_total") - gen_before < 400


def test_disconnect_non_streaming_aborts(server):
    wait_for(lambda: _idle(server), 60, what="idle before the test")
    aborted = metric(server, "pagedserve:request_success_total", finished_reason="abort")
    s = _raw_post(server.port, "/v1/chat/completions",
                  {"messages": [{"role": "user", "content": "Count to one thousand."}], "max_tokens": 400,
                   "ignore_eos": True})
    wait_for(lambda: metric(server, "pagedserve:kv_cache_usage_perc") > 0, 60, interval=0.05,
             what="the request to start")
    s.close()
    wait_for(lambda: _idle(server), 60, what="blocks freed after the disconnect")
    assert metric(server, "pagedserve:request_success_total", finished_reason="abort") == aborted + 1
