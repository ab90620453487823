"""Tiny random Mixture-of-Experts HF models (Mixtral, Qwen2-MoE, Qwen3-MoE) built with transformers
at test time, with the real SmolLM2 tokenizer: hidden 64, 2 layers, 4-8 experts, top-2."""
from __future__ import annotations

from typing import Any

import torch

from tests.runtime.model_factory import BASE, TOKENIZER_FILES  # noqa: F401 (shared sizes)

MOE_ARCHS: dict[str, dict[str, Any]] = {
    "mixtral": dict(cls="MixtralConfig", num_local_experts=4, num_experts_per_tok=2, intermediate_size=96,
                    tie_word_embeddings=False, rope_theta=10000.0, sliding_window=None),
    # shared expert with its sigmoid gate; top-k weights not renormalised (norm_topk_prob=False)
    "qwen2_moe": dict(cls="Qwen2MoeConfig", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=48, norm_topk_prob=False, tie_word_embeddings=False,
                      rope_theta=10000.0, use_sliding_window=False),
    # q/k norm, renormalised top-k, layer 0 dense (mlp_only_layers) with intermediate_size
    "qwen3_moe": dict(cls="Qwen3MoeConfig", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      norm_topk_prob=True, mlp_only_layers=[0], head_dim=32, tie_word_embeddings=False,
                      rope_theta=10000.0, use_sliding_window=False),
}


def make_tiny_moe(out_dir: str, arch: str, tokenizer_dir: str, seed: int = 0, stacked: bool = False) -> str:
    """Save a tiny random model of ``arch``. ``stacked``: write the in-memory state dict of
    transformers 5 (3-D ``experts.gate_up_proj`` / ``experts.down_proj``) instead of the per-expert
    tensors that ``save_pretrained`` writes."""
    import os
    import shutil

    import transformers
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    spec = dict(MOE_ARCHS[arch])
    cls = getattr(transformers, spec.pop("cls"))
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = cls(vocab_size=len(tok), **{**BASE, "initializer_range": 0.1, **spec})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # routers with distinct preferences, so that routing differs between tokens
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight") or name.endswith("shared_expert_gate.weight"):
                p.normal_(0, 0.5)
            if arch == "qwen2_moe" and "self_attn" in name and name.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(out_dir)
    if stacked:
        for f in os.listdir(out_dir):
            if f.endswith(".safetensors") or f.endswith(".index.json"):
                os.remove(os.path.join(out_dir, f))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    for f in TOKENIZER_FILES:
        src = os.path.join(tokenizer_dir, f)
        if os.path.exists(src):
            shutil.copy(src, out_dir)
    return out_dir
