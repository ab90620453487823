"""`pagedserve serve --quantization fp8 --kv-cache-dtype fp8`: the server starts with fp8 linear
layers and an fp8 KV cache (neither flag is refused any more), the real openai client gets the
France answer from SmolLM2, `/v1/models` names the quantization and `/metrics` reports the cache
dtype as vLLM does."""
from __future__ import annotations

import openai

from tests.server.conftest import start_server
from tests.server.server_proc import request


def test_fp8_server_answers(tmp_path_factory):
    srv = start_server(tmp_path_factory, "fp8", ["--quantization", "fp8", "--kv-cache-dtype", "fp8",
                                                  "--max-num-seqs", "4"])
    try:
        log = srv.log_text()
        assert "fp8 (online" in log and ": 120 linear layers quantized" in log  # 30 layers x qkv, o, gate_up, down
        assert "float8_e4m3fn)" in log  # the KV cache line names its dtype
        client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model=client.models.list().data[0].id, temperature=0, max_tokens=8,
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}])
        assert "Paris" in r.choices[0].message.content
        assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 10
        assert request(srv, "GET", "/v1/models")[1]["data"][0]["quantization"] == "fp8"
        status, text = request(srv, "GET", "/metrics")
        assert status == 200 and 'cache_dtype="fp8"' in text
    finally:
        assert srv.stop() == 0
