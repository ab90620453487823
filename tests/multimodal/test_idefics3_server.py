"""The OpenAI server with a tiny Idefics3 / SmolVLM: the real ``openai`` client sends a data: URL image
in a chat content part; the reply is HF's greedy text for the processor's own chat rendering and
tiling of the decoded image, and the usage counts the expanded tile tokens."""
from __future__ import annotations

import pytest

from tests.multimodal.idefics3_factory import hf_generate
from tests.multimodal.llava_factory import data_url, image
from tests.server.conftest import start_server

MAX_NEW = 6


@pytest.fixture(scope="module")
def idefics3_server(tmp_path_factory, tiny_idefics3):
    srv = start_server(tmp_path_factory, "idefics3", ["--model", tiny_idefics3, "--dtype", "float32",
                                                       "--max-num-batched-tokens", "16", "--block-size", "8",
                                                       "--limit-mm-per-prompt", '{"image": 1}'])
    yield srv
    srv.stop()


def test_openai_client_data_url(idefics3_server, tiny_idefics3):
    import openai
    from transformers import AutoProcessor

    client = openai.OpenAI(base_url=idefics3_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    img = image(1, size=(50, 40))  # PNG is lossless: the server decodes the same pixels
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(img)}},
                                         {"type": "text", "text": "What is in this picture?"}]}]
    resp = client.chat.completions.create(model=tiny_idefics3, messages=msgs, max_tokens=MAX_NEW, temperature=0.0,
                                          extra_body={"ignore_eos": True})
    proc = AutoProcessor.from_pretrained(tiny_idefics3)
    prompt = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What is in this picture?"}]}], add_generation_prompt=True)
    tokens, _ = hf_generate(tiny_idefics3, prompt, [img], MAX_NEW)
    assert resp.choices[0].message.content == proc.tokenizer.decode(tokens, skip_special_tokens=True)
    n_prompt = len(proc(text=[prompt], images=[img])["input_ids"][0])
    assert resp.usage.prompt_tokens == n_prompt and resp.usage.completion_tokens == MAX_NEW
    assert n_prompt > 5 * 4  # four tiles and the global view, 4 image tokens each, plus their markers

    with pytest.raises(openai.BadRequestError, match="--limit-mm-per-prompt"):
        client.chat.completions.create(model=tiny_idefics3, max_tokens=2, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image(s))}}
                                         for s in (2, 3)]}])
