"""`pagedserve serve --quantization fp8`: the server starts with fp8 linear layers (the flag is no
longer refused) and the real openai client gets the France answer from SmolLM2 in fp8."""
from __future__ import annotations

import openai

from tests.server.conftest import start_server


def test_fp8_server_answers(tmp_path_factory):
    srv = start_server(tmp_path_factory, "fp8", ["--quantization", "fp8", "--max-num-seqs", "4"])
    try:
        assert "fp8: 120 linear layers quantized" in srv.log_text()  # 30 layers x qkv, o, gate_up, down
        client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model=client.models.list().data[0].id, temperature=0, max_tokens=8,
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}])
        assert "Paris" in r.choices[0].message.content
        assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 10
    finally:
        assert srv.stop() == 0
