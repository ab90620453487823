"""Small random HF models of every supported architecture for the GPU checks (bench/gpu_engine_check.py,
bench/tp_gpu.py): 8 heads, 2 KV heads (replicated at TP=4), 4 layers, vocab 4096, sharp logits."""
from __future__ import annotations

import os

import torch

ARCH_CFG = {
    "llama": ("LlamaConfig", dict(tie_word_embeddings=True)),
    "llama3_scaled": ("LlamaConfig", dict(rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256})),
    "mistral": ("MistralConfig", dict(sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(use_sliding_window=False)),
    "qwen3": ("Qwen3Config", dict(head_dim=64, use_sliding_window=False)),
    # Mixture-of-Experts (the fused MoE kernel: decode path at batch <= 2, grouped GEMM above)
    "mixtral": ("MixtralConfig", dict(num_local_experts=8, num_experts_per_tok=2, sliding_window=None)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(num_experts=16, num_experts_per_tok=4, moe_intermediate_size=256,
                                         shared_expert_intermediate_size=512, use_sliding_window=False)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_experts=32, num_experts_per_tok=4, moe_intermediate_size=256,
                                         norm_topk_prob=True, head_dim=64, use_sliding_window=False)),
}


def make_tiny(root: str, arch: str, seed: int) -> str:
    """8 heads, 2 KV heads (replicated at TP=4), 4 layers, vocab 4096; qwen2 with a real qkv bias."""
    import transformers

    cls_name, extra = ARCH_CFG[arch]
    cfg = getattr(transformers, cls_name)(
        vocab_size=4096, hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.1, **extra)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    if arch == "qwen2":
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    out = os.path.join(root, arch)
    model.save_pretrained(out)
    return out
