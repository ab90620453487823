"""Issue 21's defects, each against a real server: multi-prompt admission under
--max-waiting-requests, stop-token text, the chosen token in completion top_logprobs, error codes,
header/body read timeouts (slowloris), --metrics-prefix vllm and `bench serve --base-url` alone."""
from __future__ import annotations

import argparse
import socket
import time

import pytest

from tests.server.conftest import start_server
from tests.server.server_proc import metrics, post, request, sse_events

COMP = "/v1/completions"
TIMEOUT_S = 2


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = start_server(tmp_path_factory, "defects", [
        "--max-num-seqs", "8", "--max-waiting-requests", "4", "--max-sequences-per-request", "16",
        "--timeout-keep-alive", str(TIMEOUT_S), "--request-body-timeout", str(TIMEOUT_S), "--metrics-prefix", "vllm"])
    yield s
    s.stop()


# -- 1: a request of several prompts counts once; prompts x n is capped per request ---------------
def test_six_prompts_with_four_waiting_slots(srv):
    prompts = [f"Count to {i}:" for i in range(6)]
    status, body = post(srv, COMP, {"prompt": prompts, "max_tokens": 2, "temperature": 0})
    assert status == 200, body
    assert sorted(c["index"] for c in body["choices"]) == list(range(6))


def test_prompts_times_n_cap(srv):
    status, body = post(srv, COMP, {"prompt": ["a", "b", "c", "d", "e", "f"], "n": 3, "max_tokens": 1})
    assert status == 400 and body["error"]["param"] == "prompt", body
    assert "18 sequences" in body["error"]["message"] and "16" in body["error"]["message"]


# -- 2: a stop token id's text is not in the output ----------------------------------------------
def test_stop_token_ids_text_not_in_output(srv):
    base = {"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "ignore_eos": True}
    status, ref = post(srv, COMP, {**base, "logprobs": 0})
    assert status == 200, ref
    tokens = ref["choices"][0]["logprobs"]["tokens"]
    stop_idx = 2
    stop_text = tokens[stop_idx]
    first = tokens.index(stop_text)
    status, ids = post(srv, "/tokenize", {"prompt": stop_text, "add_special_tokens": False})
    assert status == 200 and len(ids["tokens"]) == 1, ids
    stop_id = ids["tokens"][0]
    status, out = post(srv, COMP, {**base, "stop_token_ids": [stop_id]})
    c = out["choices"][0]
    assert c["finish_reason"] == "stop" and c["stop_reason"] == stop_id, c
    assert c["text"] == "".join(tokens[:first]), (c, tokens)
    status, out = post(srv, COMP, {**base, "stop_token_ids": [stop_id], "include_stop_str_in_output": True})
    assert out["choices"][0]["text"] == "".join(tokens[:first + 1])
    # streaming: same text
    status, text = post(srv, COMP, {**base, "stop_token_ids": [stop_id], "stream": True})
    chunks = [e["choices"][0]["text"] for e in sse_events(text) if e != "[DONE]"]
    assert "".join(chunks) == "".join(tokens[:first])


# -- 3: completion top_logprobs include the chosen token (and the prompt token with echo) --------
def test_completion_top_logprobs_include_chosen_and_prompt_token(srv):
    status, body = post(srv, COMP, {"prompt": "Once upon a time", "max_tokens": 6, "temperature": 1.5,
                                    "seed": 7, "logprobs": 1})
    assert status == 200, body
    lp = body["choices"][0]["logprobs"]
    for tok, tlp, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert tok in top and abs(top[tok] - tlp) < 1e-6, (tok, top)
        assert 1 <= len(top) <= 2
    status, body = post(srv, COMP, {"prompt": "Once upon a time", "max_tokens": 2, "temperature": 0,
                                    "logprobs": 0, "echo": True})
    lp = body["choices"][0]["logprobs"]
    assert lp["top_logprobs"][0] is None and lp["token_logprobs"][0] is None  # the first prompt token
    for tok, top in zip(lp["tokens"][1:], lp["top_logprobs"][1:]):
        assert list(top) == [tok], (tok, top)  # logprobs=0: just the prompt / chosen token


# -- 4: error codes ------------------------------------------------------------------------------
def test_error_codes(srv):
    status, body = post(srv, COMP, {"prompt": "", "max_tokens": 1})
    assert status == 400 and body["error"]["code"] != "context_length_exceeded", body
    assert "empty" in body["error"]["message"] and body["error"]["param"] == "prompt"
    status, body = post(srv, COMP, {"prompt": [], "max_tokens": 1})
    assert status == 400 and "empty" in body["error"]["message"] and body["error"]["param"] == "prompt", body
    status, body = request(srv, "GET", "/v1/nothing-here")
    assert status == 404 and body["error"]["code"] == "not_found", body
    status, body = request(srv, "GET", COMP)
    assert status == 405 and body["error"]["code"] == "method_not_allowed", body
    for raw, param in ((b'{"prompt": "a\\ud800b", "max_tokens": 1}', "prompt"),
                       (b'{"messages": [{"role": "user", "content": "\\udc00"}]}', "messages[0].content")):
        path = COMP if b"prompt" in raw else "/v1/chat/completions"
        status, body = request(srv, "POST", path, raw=raw)
        assert status == 400 and body["error"]["param"] == param, body
        assert "surrogate" in body["error"]["message"] and "Error" not in body["error"]["message"], body
    status, body = request(srv, "POST", COMP, raw=b'{"prompt": "\\ud83d\\ude00", "max_tokens": 1}')
    assert status == 200, body  # a valid surrogate pair is an ordinary character


# -- 5: header and body read timeouts ------------------------------------------------------------
def _closed_within(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    sock.settimeout(limit)
    t0, data = time.monotonic(), b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return time.monotonic() - t0, data
        data += chunk


def test_slow_headers_are_cut_off(srv):
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: app")
        elapsed, data = _closed_within(s, TIMEOUT_S + 10)
    assert elapsed < TIMEOUT_S + 5 and data == b""


def test_slow_body_gets_408_and_close(srv):
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{")
        elapsed, data = _closed_within(s, TIMEOUT_S + 10)
    assert elapsed < TIMEOUT_S + 5, elapsed
    assert data.startswith(b"HTTP/1.1 408") and b"request_timeout" in data, data[:300]
    status, body = request(srv, "GET", "/health")
    assert status == 200  # the server is fine


# -- --metrics-prefix vllm -----------------------------------------------------------------------
def test_metrics_prefix_vllm(srv):
    names = {k.split("{", 1)[0] for k in metrics(srv)}
    assert "vllm:num_requests_running" in names and "vllm:generation_tokens_total" in names
    assert not any(n.startswith("pagedserve:") for n in names)


# -- 7: bench serve --base-url without --model ---------------------------------------------------
def test_bench_serve_base_url_finds_the_tokenizer_or_says_what_to_pass(srv):
    from pagedserve.benchmarks.serve import _resolve_tokenizer

    args = argparse.Namespace(model=None, tokenizer=None, base_url=srv.base_url, api_key=None,
                              served_model_name=None)
    tok, vocab = _resolve_tokenizer(args)  # the server runs here: its model directory has the tokenizer
    assert vocab == 49152 and tok.encode("hi")
    args.served_model_name = "not-served"
    with pytest.raises(ValueError, match="--tokenizer DIR"):
        _resolve_tokenizer(args)
    args.base_url = "http://127.0.0.1:9"  # nothing listens
    with pytest.raises(ValueError, match="is the server up"):
        _resolve_tokenizer(args)
