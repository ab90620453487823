"""LoRA on the OpenAI server, through the real ``openai`` client: ``--lora-modules`` (both forms),
a request whose ``model`` is an adapter runs with it (tokens equal HF + peft), ``/v1/models`` lists
adapters with their ``parent``, runtime load / unload behind the API key, the routes absent unless
enabled, and ``lora_requests_info`` on /metrics."""
from __future__ import annotations

import json

import openai
import pytest

from tests.lora.conftest import MAX_NEW
from tests.server.server_proc import ServerProc, request

KEY = "lora-secret"


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory, base_dir, adapters):
    log = tmp_path_factory.mktemp("lora_server") / "server.log"
    srv = ServerProc(["--model", base_dir, "--served-model-name", "base", "--dtype", "float32", "--device", "cpu",
                      "--max-model-len", "256", "--kv-cache-memory", str(16 << 20), "--enable-lora",
                      "--max-loras", "2", "--max-cpu-loras", "3", "--api-key", KEY, "--allow-runtime-lora-updating",
                      "--lora-modules", f"all8={adapters['all8']}",
                      json.dumps({"name": "attn16", "path": adapters["attn16"], "base_model_name": "base"})],
                     str(log))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(lora_server):
    return openai.OpenAI(base_url=lora_server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def _text(client, model: str, prompt: list[int]) -> str:
    out = client.completions.create(model=model, prompt=prompt, max_tokens=MAX_NEW, temperature=0.0,
                                    extra_body={"ignore_eos": True})
    assert out.model == model
    return out.choices[0].text


def test_models_lists_adapters_with_parent(client, adapters):
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"base", "all8", "attn16"}
    assert cards["all8"].parent == "base" and cards["attn16"].parent == "base"
    assert cards["all8"].root == adapters["all8"]
    assert cards["base"].parent is None


def test_adapter_requests_match_peft(client, tok, references, prompt_ids):
    assert _text(client, "all8", prompt_ids[0]) == tok.decode(references["all8"][0])
    assert _text(client, "attn16", prompt_ids[1]) == tok.decode(references["attn16"][1])
    assert _text(client, "base", prompt_ids[2]) == tok.decode(references[None][2])


def test_runtime_load_and_unload(lora_server, client, tok, adapters, references, prompt_ids):
    raw = client.post("/load_lora_adapter", body={"lora_name": "mlp8rs", "lora_path": adapters["mlp8rs"]},
                      cast_to=str)
    assert "added successfully" in raw
    assert "mlp8rs" in {m.id for m in client.models.list().data}
    assert _text(client, "mlp8rs", prompt_ids[2]) == tok.decode(references["mlp8rs"][2])
    with pytest.raises(openai.BadRequestError, match="already been loaded"):
        client.post("/load_lora_adapter", body={"lora_name": "mlp8rs", "lora_path": adapters["mlp8rs"]},
                    cast_to=str)
    with pytest.raises(openai.BadRequestError, match="no such adapter directory"):
        client.post("/load_lora_adapter", body={"lora_name": "ghost", "lora_path": "/nonexistent/adapter"},
                    cast_to=str)
    raw = client.post("/unload_lora_adapter", body={"lora_name": "mlp8rs"}, cast_to=str)
    assert "removed successfully" in raw
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="mlp8rs", prompt=prompt_ids[0], max_tokens=2)
    with pytest.raises(openai.NotFoundError, match="cannot be found"):
        client.post("/unload_lora_adapter", body={"lora_name": "mlp8rs"}, cast_to=str)
    # loaded again under the same name: served again (a fresh adapter id)
    client.post("/load_lora_adapter", body={"lora_name": "mlp8rs", "lora_path": adapters["mlp8rs"]},
                cast_to=str)
    assert _text(client, "mlp8rs", prompt_ids[2]) == tok.decode(references["mlp8rs"][2])
    wrong = openai.OpenAI(base_url=lora_server.base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.post("/load_lora_adapter", body={"lora_name": "x", "lora_path": adapters["all8"]}, cast_to=str)


def test_lora_requests_info_metric(lora_server, client, prompt_ids):
    _text(client, "all8", prompt_ids[0])
    status, body = request(lora_server, "GET", "/metrics")
    text = body.decode() if isinstance(body, bytes) else str(body)
    assert status == 200
    lines = [ln for ln in text.splitlines() if ln.startswith("pagedserve:lora_requests_info{")]
    assert len(lines) == 1, lines
    assert 'max_lora="2"' in lines[0] and "running_lora_adapters=" in lines[0] and "waiting_lora_adapters=" in lines[0]


def test_load_routes_absent_unless_enabled(monkeypatch):
    """Without --allow-runtime-lora-updating (or the env var) the routes do not exist."""
    from pagedserve.entrypoints.openai.api_server import build_app
    from pagedserve.entrypoints.openai.serving_lora import ENV_ALLOW_RUNTIME_UPDATING, runtime_updating_allowed

    routes = lambda app: {r.resource.canonical for r in app.router.routes()}  # noqa: E731
    assert "/v1/load_lora_adapter" not in routes(build_app(None))
    assert "/v1/unload_lora_adapter" in routes(build_app(None, allow_runtime_lora_updating=True))
    monkeypatch.setenv(ENV_ALLOW_RUNTIME_UPDATING, "1")
    assert runtime_updating_allowed(False)
    monkeypatch.setenv(ENV_ALLOW_RUNTIME_UPDATING, "0")
    assert not runtime_updating_allowed(False)


@pytest.mark.parametrize("value,message", [
    ("noequals", "expected name=path"), ('{"name": 1}', "needs string 'name' and 'path'"),
    ('{"name": "a", "path": "/p", "rank": 2}', "unknown key"), ("{bad", "not valid JSON")])
def test_lora_modules_flag_is_checked(value, message):
    from pagedserve.entrypoints.openai.serving_lora import parse_lora_modules

    with pytest.raises(ValueError, match=message):
        parse_lora_modules([value])
    assert parse_lora_modules(["a=/x", '{"name": "b", "path": "/y", "base_model_name": "m"}'])[1].base_model_name == "m"


def test_adapter_paths_resolve(adapters, tmp_path, monkeypatch):
    """A local directory stays as it is; an ``hf://`` adapter comes from the HF cache (here: offline and
    not cached, a clear error)."""
    from pagedserve.entrypoints.openai.serving_lora import resolve_adapter_path

    assert resolve_adapter_path(adapters["all8"]) == adapters["all8"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="cannot download it from the Hub"):
        resolve_adapter_path("hf://someone/some-lora")
