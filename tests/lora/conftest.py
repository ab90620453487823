"""Fixtures of the LoRA tests: a tiny random Llama with the real SmolLM2 tokenizer (fast, so that
every combination can be checked), PEFT adapters of it built with peft at test time, and their HF +
peft greedy references (float32)."""
from __future__ import annotations

import os

import pytest

from tests.lora.adapters import ALL_TARGETS, make_adapter, peft_greedy
from tests.runtime.model_factory import make_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "Once upon a time, a small robot named"]
MAX_NEW = 10

#: name → (rank, targets, extra): ranks 8 / 16, all 7 modules, attention only, MLP only with rsLoRA
SPECS = {
    "all8": (8, ALL_TARGETS, {}),
    "attn16": (16, ["q_proj", "k_proj", "v_proj", "o_proj"], {}),
    "mlp8rs": (8, ["gate_proj", "up_proj", "down_proj"], {"rslora": True, "alpha": 4}),
}


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from pagedserve.models.resolve import resolve_model_dir

    return resolve_model_dir("default")


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, smollm2_dir) -> str:
    return make_tiny_model(str(tmp_path_factory.mktemp("lora_base") / "llama"), "llama", smollm2_dir, seed=11)


@pytest.fixture(scope="session")
def prompt_ids(smollm2_dir) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    return [tok.encode(p) for p in PROMPTS]


@pytest.fixture(scope="session")
def adapters(tmp_path_factory, base_dir) -> dict[str, str]:
    root = tmp_path_factory.mktemp("lora_adapters")
    return {name: make_adapter(base_dir, str(root / name), r, targets, seed=i, std=0.3, **extra)
            for i, (name, (r, targets, extra)) in enumerate(SPECS.items())}


@pytest.fixture(scope="session")
def references(base_dir, adapters, prompt_ids) -> dict[str | None, list[list[int]]]:
    """HF + peft greedy tokens per adapter (None: the base model)."""
    out: dict[str | None, list[list[int]]] = {
        name: peft_greedy(base_dir, path, prompt_ids, MAX_NEW) for name, path in adapters.items()}
    out[None] = peft_greedy(base_dir, None, prompt_ids, MAX_NEW)
    for name in adapters:
        assert out[name] != out[None], f"adapter {name} should change the greedy tokens"
    return out
