"""Fixtures of the Hub tests: the default model's HF directory, a tiny sharded model, and a fake Hub
(``tests/hub/fake_hub.py``) with the environment pointed at it (``HF_ENDPOINT``, a fresh ``HF_HOME``)."""
from __future__ import annotations

import os

import pytest

from tests.hub.fake_hub import FakeHub


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from pagedserve.models.resolve import resolve_model_dir

    return resolve_model_dir("default")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> str:
    """A tiny random Llama with the real SmolLM2 tokenizer, sharded (index + 2 safetensors)."""
    from tests.runtime.model_factory import make_tiny_model

    return make_tiny_model(str(tmp_path_factory.mktemp("tiny") / "llama"), "llama", smollm2_dir, shard=True)


@pytest.fixture
def fake_hub():
    hub = FakeHub().start()
    yield hub
    hub.stop()


@pytest.fixture
def hub_env(fake_hub, tmp_path, monkeypatch) -> dict[str, str]:
    """Point this process (and children started with ``os.environ``) at the fake hub, online, with an
    empty HF cache. Also resets huggingface_hub's import-time offline flag (other test packages set
    ``HF_HUB_OFFLINE=1`` for the whole session)."""
    import huggingface_hub.constants

    env = {"HF_ENDPOINT": fake_hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("HF_TOKEN", "HF_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return env


def cache_dir(env: dict[str, str]) -> str:
    return os.path.join(env["HF_HOME"], "hub")
