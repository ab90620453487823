"""The OpenAI server with a tiny LLaVA: the real ``openai`` client sends images as data: URLs (PNG,
JPEG) in chat content parts and gets HF's greedy tokens; http(s) images only from hosts named by
--allowed-media-domains (fetched with a size limit); clear 400s for bad images and limits."""
from __future__ import annotations

import http.server
import io
import threading

import pytest

from tests.multimodal.llava_factory import data_url, hf_generate, image
from tests.server.conftest import start_server
from tests.server.server_proc import post

MAX_NEW = 6


@pytest.fixture(scope="module")
def llava_server(tmp_path_factory, tiny_llava):
    srv = start_server(tmp_path_factory, "llava", ["--model", tiny_llava, "--dtype", "float32",
                                                    "--max-num-batched-tokens", "16", "--block-size", "8",
                                                    "--limit-mm-per-prompt", '{"image": 2}',
                                                    "--allowed-media-domains", "127.0.0.1", "--max-image-bytes",
                                                    "20000"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def image_host():
    """A loopback HTTP server: /small.png (an image) and /big.png (over --max-image-bytes)."""
    small, big = io.BytesIO(), io.BytesIO()
    image(7).save(small, format="PNG")
    image(8, size=(200, 200)).save(big, format="PNG")
    files = {"/small.png": small.getvalue(), "/big.png": big.getvalue()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _messages(*urls: str, text: str = "What is in these pictures?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts]}]


def _hf_text(model_dir: str, msgs: list[dict], imgs: list) -> tuple[str, int]:
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(model_dir)
    conv = [{"role": m["role"], "content": [{"type": "text", "text": p["text"]} if p["type"] == "text"
                                             else {"type": "image"} for p in m["content"]]} for m in msgs]
    prompt = proc.apply_chat_template(conv, add_generation_prompt=True)
    tokens, _ = hf_generate(model_dir, prompt, imgs, MAX_NEW)
    n_prompt = len(proc(text=[prompt], images=imgs)["input_ids"][0])
    return proc.tokenizer.decode(tokens, skip_special_tokens=True), n_prompt


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_openai_client_data_url(llava_server, tiny_llava, fmt):
    import openai
    from PIL import Image

    client = openai.OpenAI(base_url=llava_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    msgs = _messages(data_url(image(1), fmt), data_url(image(2), fmt))
    resp = client.chat.completions.create(model=tiny_llava, messages=msgs, max_tokens=MAX_NEW, temperature=0.0,
                                          extra_body={"ignore_eos": True})
    # the images as the server decoded them (JPEG is lossy)
    decoded = [Image.open(io.BytesIO(__import__("base64").b64decode(data_url(image(s), fmt).split(",")[1])))
               .convert("RGB") for s in (1, 2)]
    text, n_prompt = _hf_text(tiny_llava, msgs, decoded)
    assert resp.choices[0].message.content == text
    assert resp.usage.prompt_tokens == n_prompt and resp.usage.completion_tokens == MAX_NEW


def test_http_url_from_allowed_host(llava_server, tiny_llava, image_host):
    status, resp = post(llava_server, "/v1/chat/completions", {
        "messages": _messages(image_host + "/small.png"), "max_tokens": MAX_NEW, "temperature": 0,
        "ignore_eos": True})
    assert status == 200, resp
    assert resp["choices"][0]["message"]["content"] == _hf_text(tiny_llava, _messages("x"), [image(7)])[0]


@pytest.mark.parametrize("url,param,words", [
    ("http://localhost:9/x.png", "messages[0].content[1].image_url.url", ["not in --allowed-media-domains"]),
    ("ftp://127.0.0.1/x.png", "messages[0].content[1].image_url.url", ["unsupported url scheme"]),
    ("data:image/png;base64,@@@", "messages[0].content[1].image_url.url", ["base64"]),
    ("data:image/png;base64,aGVsbG8=", "messages[0].content[1].image_url.url", ["not a readable image"]),
    ("data:text/plain;base64,aGVsbG8=", "messages[0].content[1].image_url.url", ["not an image"]),
])
def test_bad_images(llava_server, url, param, words):
    status, resp = post(llava_server, "/v1/chat/completions", {"messages": _messages(url), "max_tokens": 2})
    assert status == 400, resp
    assert resp["error"]["param"] == param, resp
    for w in words:
        assert w in resp["error"]["message"].lower(), resp


def test_size_and_count_limits(llava_server, image_host):
    status, resp = post(llava_server, "/v1/chat/completions",
                        {"messages": _messages(image_host + "/big.png"), "max_tokens": 2})
    assert status == 400 and "--max-image-bytes" in resp["error"]["message"], resp
    three = [data_url(image(s)) for s in (1, 2, 3)]
    status, resp = post(llava_server, "/v1/chat/completions", {"messages": _messages(*three), "max_tokens": 2})
    assert status == 400 and "--limit-mm-per-prompt" in resp["error"]["message"], resp
    assert resp["error"]["param"] == "messages"


def test_http_off_by_default():
    from pagedserve.entrypoints.media import MediaOptions, load_image

    with pytest.raises(ValueError, match=r"x\.url: http\(s\) image URLs are off on this server.*--allowed-media"):
        load_image("https://example.com/cat.png", MediaOptions(), "x.url")


def test_encoder_cache_metrics(llava_server):
    """/metrics after image requests: the same image behind other text is looked up again (the prefix
    cache misses before it) and served from the encoder cache (vLLM's mm_cache_* counters)."""
    from tests.server.server_proc import metric, wait_for

    names = ("pagedserve:mm_cache_queries_total", "pagedserve:mm_cache_hits_total",
             "pagedserve:mm_encoder_tokens_total")
    before = [metric(llava_server, n) for n in names]
    img = data_url(image(11))
    for text in ("What is this?", "Describe the colours."):
        status, resp = post(llava_server, "/v1/chat/completions",
                            {"messages": _messages(img, text=text), "max_tokens": 2, "temperature": 0})
        assert status == 200, resp
    want = [before[0] + 2, before[1] + 1, before[2] + 16]  # 16 image tokens encoded once
    wait_for(lambda: [metric(llava_server, n) for n in names] == want, timeout=30, what="mm cache counters")
    assert 0.0 <= metric(llava_server, "pagedserve:encoder_cache_usage_perc") <= 1.0
