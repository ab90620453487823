from __future__ import annotations

import os

import pytest

from tests.lora.adapters import ALL_TARGETS, make_adapter, peft_greedy

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "Once upon a time, a small robot"]
MAX_NEW = 10

#: name → (rank, targets, extra): ranks 8 / 16, all 7 modules, attention only, rsLoRA
SPECS = {
    "all8": (8, ALL_TARGETS, {}),
    "attn16": (16, ["q_proj", "k_proj", "v_proj", "o_proj"], {}),
    "mlp8rs": (8, ["gate_proj", "up_proj", "down_proj"], {"rslora": True}),
}


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from pagedserve.models.resolve import resolve_model_dir

    return resolve_model_dir("default")


@pytest.fixture(scope="session")
def prompt_ids(smollm2_dir) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    return [tok.encode(p) for p in PROMPTS]


@pytest.fixture(scope="session")
def adapters(tmp_path_factory, smollm2_dir) -> dict[str, str]:
    root = tmp_path_factory.mktemp("lora_adapters")
    return {name: make_adapter(smollm2_dir, str(root / name), r, targets, seed=i, **extra)
            for i, (name, (r, targets, extra)) in enumerate(SPECS.items())}


@pytest.fixture(scope="session")
def references(smollm2_dir, adapters, prompt_ids) -> dict[str | None, list[list[int]]]:
    """HF + peft greedy tokens per adapter (None: the base model)."""
    out = {name: peft_greedy(smollm2_dir, path, prompt_ids, MAX_NEW) for name, path in adapters.items()}
    out[None] = peft_greedy(smollm2_dir, None, prompt_ids, MAX_NEW)
    return out
