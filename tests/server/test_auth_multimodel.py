"""One server, two models, an API key: routing by `model`, 401s, and what happens when one
model's engine process dies (503 for it, /health fails, the other model keeps serving)."""
from __future__ import annotations

import os
import re
import signal

import openai
import pytest

from tests.server.conftest import start_server
from tests.server.server_proc import StreamReader, metrics, post, request, wait_for

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    srv = start_server(tmp_path_factory, "multi", [
        "--model", "default", "--served-model-name", "smol-a", "alias-a",
        "--model", "default", "--served-model-name", "smol-b", "--max-num-seqs", "2"],
        env={"PAGEDSERVE_API_KEY": KEY})
    yield srv
    srv.stop()


def test_api_key_required(multi):
    for path in ("/v1/models", "/tokenize"):
        method = "GET" if path == "/v1/models" else "POST"
        body = None if method == "GET" else {"prompt": "hi"}
        assert request(multi, method, path, body)[0] == 401
        status, resp = request(multi, method, path, body, headers={"Authorization": "Bearer wrong"})
        assert status == 401 and resp["error"]["code"] == "invalid_api_key"
        assert request(multi, method, path, body, headers=AUTH)[0] == 200
    assert request(multi, "POST", "/v1/completions", {"prompt": "hi"}, headers={"Authorization": KEY})[0] == 401
    for path in ("/health", "/metrics", "/version"):  # probes and scrapes stay open
        assert request(multi, "GET", path)[0] == 200
    client = openai.OpenAI(base_url=multi.base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_models_routed_by_name(multi):
    client = openai.OpenAI(base_url=multi.base_url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["smol-a", "smol-b"]
    for name in ("smol-a", "alias-a", "smol-b"):
        r = client.completions.create(model=name, prompt="Hello", max_tokens=2, temperature=0)
        assert r.model == ("smol-b" if name == "smol-b" else "smol-a") and r.usage.completion_tokens == 2
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="smol-c", prompt="Hello", max_tokens=2)
    names = {re.search(r'model_name="([^"]+)"', k).group(1) for k in metrics(multi) if 'model_name="' in k}
    assert {"smol-a", "smol-b"} <= names


def test_reset_prefix_cache_resets_every_model(multi):
    prompt = {"model": "smol-a", "prompt": "The quick brown fox jumps over the lazy dog. " * 6, "max_tokens": 1}
    assert request(multi, "POST", "/v1/completions", prompt, headers=AUTH)[0] == 200
    assert request(multi, "POST", "/reset_prefix_cache")[0] == 401  # an admin action: the key is required
    status, body = request(multi, "POST", "/reset_prefix_cache", headers=AUTH)
    assert status == 200 and set(body["dropped_blocks"]) == {"smol-a", "smol-b"}
    assert body["dropped_blocks"]["smol-a"] >= 3  # the prompt's full 16-token blocks were cached
    status, body = request(multi, "POST", "/reset_prefix_cache", headers=AUTH)
    assert body["dropped_blocks"] == {"smol-a": 0, "smol-b": 0}


def test_engine_death_gives_503_not_hang(multi):
    pids = dict(re.findall(r"engine for '([^']+)' ready: .* engine core pid (\d+)", multi.log_text()))
    assert set(pids) == {"smol-a", "smol-b"}
    in_flight = StreamReader(multi.port, {"model": "smol-b", "prompt": "Go on and on.", "max_tokens": 400,
                                          "ignore_eos": True, "stream": True}, headers=AUTH)
    in_flight.start()
    assert in_flight.first_token.wait(120) and in_flight.error is None, in_flight.error
    os.kill(int(pids["smol-b"]), signal.SIGKILL)
    in_flight.join(30)  # the open stream ends with an error event, it does not hang
    assert not in_flight.is_alive() and in_flight.error is None
    assert in_flight.events[-1] == "[DONE]" and in_flight.events[-2]["error"]["code"] == "engine_dead"
    status, resp = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(request(multi, "GET", "/health")), 30,
                            what="/health to fail")
    assert "smol-b" in resp["error"]["message"] and resp["error"]["code"] == "engine_dead"
    status, resp = post(multi, "/v1/completions", {"model": "smol-b", "prompt": "hi", "max_tokens": 2},
                        headers=AUTH, timeout=30)
    assert status == 503 and resp["error"]["type"] == "server_error"
    status, resp = post(multi, "/v1/chat/completions",
                        {"model": "smol-b", "messages": [{"role": "user", "content": "hi"}], "stream": True},
                        headers=AUTH, timeout=30)
    assert status == 503
    status, resp = post(multi, "/v1/completions", {"model": "smol-a", "prompt": "hi", "max_tokens": 2},
                        headers=AUTH, timeout=120)
    assert status == 200
