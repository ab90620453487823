"""Model registry keyed by ``architectures[0]`` in config.json."""
from __future__ import annotations

from torch import nn

from pagedserve.models.llama import (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
                                     Qwen3ForCausalLM)
from pagedserve.models.mixtral import MixtralForCausalLM
from pagedserve.models.qwen2_moe import Qwen2MoeForCausalLM
from pagedserve.models.qwen3_moe import Qwen3MoeForCausalLM

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "MixtralForCausalLM": MixtralForCausalLM,
    "Qwen2MoeForCausalLM": Qwen2MoeForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
}


def check_architecture(name: str) -> type[nn.Module]:
    try:
        return MODEL_REGISTRY[name]
    except KeyError:
        raise ValueError(f"model architecture {name!r} is not supported; supported architectures: "
                         f"{', '.join(sorted(MODEL_REGISTRY))}") from None
