"""Model registry keyed by ``architectures[0]`` in config.json: one line per architecture,
``"<HF architecture>": ("<module under pagedserve.models>", "<class>")``. The module is imported on
first use, so a family's file is loaded only when a model of it is. Adding a family: its model
file plus its line here (docs/models.md)."""
from __future__ import annotations

import importlib

from torch import nn

MODEL_REGISTRY: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("llama", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("llama", "Qwen3ForCausalLM"),
    "Phi3ForCausalLM": ("phi3", "Phi3ForCausalLM"),
    "Gemma2ForCausalLM": ("gemma", "Gemma2ForCausalLM"),
    "Gemma3ForCausalLM": ("gemma", "Gemma3ForCausalLM"),
    "MixtralForCausalLM": ("mixtral", "MixtralForCausalLM"),
    "Qwen2MoeForCausalLM": ("qwen2_moe", "Qwen2MoeForCausalLM"),
    "Qwen3MoeForCausalLM": ("qwen3_moe", "Qwen3MoeForCausalLM"),
    "LlavaForConditionalGeneration": ("llava", "LlavaForConditionalGeneration"),
    "Idefics3ForConditionalGeneration": ("idefics3", "Idefics3ForConditionalGeneration"),
}


def supported_architectures() -> list[str]:
    return sorted(MODEL_REGISTRY)


def check_architecture(name: str) -> type[nn.Module]:
    """The model class of an architecture; ValueError naming the supported ones if unknown."""
    try:
        module, cls = MODEL_REGISTRY[name]
    except KeyError:
        raise ValueError(f"model architecture {name!r} is not supported; supported architectures: "
                         f"{', '.join(supported_architectures())}") from None
    return getattr(importlib.import_module(f"pagedserve.models.{module}"), cls)
