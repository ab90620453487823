"""Random PEFT LoRA adapters shaped for a model (benchmarks with ``--num-lora-adapters``): every
decoder layer's q/k/v/o/gate/up/down, rank ``rank``, written as ``adapter_config.json`` +
``adapter_model.safetensors`` without peft (the engine reads them like any PEFT adapter)."""
from __future__ import annotations

import json
import os

import torch

from pagedserve.arch_config import ArchConfig
from pagedserve.lora.request import LoRARequest

_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _shapes(arch: ArchConfig) -> dict[str, tuple[int, int]]:
    h, inter = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


def write_random_adapters(arch: ArchConfig, num: int, rank: int, out_dir: str, seed: int = 0) -> list[LoRARequest]:
    from safetensors.torch import save_file

    shapes = _shapes(arch)
    reqs = []
    for i in range(num):
        path = os.path.join(out_dir, f"lora{i}")
        os.makedirs(path, exist_ok=True)
        g = torch.Generator().manual_seed(seed + i)
        tensors = {}
        for layer in range(arch.num_layers):
            for t in _TARGETS:
                fan_in, fan_out = shapes[t]
                mod = f"base_model.model.model.layers.{layer}.{'self_attn' if t in _TARGETS[:4] else 'mlp'}.{t}"
                tensors[f"{mod}.lora_A.weight"] = (torch.randn(rank, fan_in, generator=g) / fan_in ** 0.5).to(torch.bfloat16)
                tensors[f"{mod}.lora_B.weight"] = (torch.randn(fan_out, rank, generator=g) * 0.01).to(torch.bfloat16)
        save_file(tensors, os.path.join(path, "adapter_model.safetensors"))
        with open(os.path.join(path, "adapter_config.json"), "w") as fh:
            json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(_TARGETS),
                       "bias": "none", "use_rslora": False, "use_dora": False}, fh)
        reqs.append(LoRARequest(f"lora{i}", i + 1, path))
    return reqs
