"""Gemma 2 and Gemma 3 (text: ``Gemma3ForCausalLM``) decoders.

What differs from Llama: embeddings scaled by ``sqrt(hidden_size)`` (rounded to the model dtype,
as HF); RMSNorm with a ``(1 + w)`` scale; "sandwich" norms (post-attention and pre/post-feedforward
norms around both blocks); GeGLU with ``gelu_pytorch_tanh``; attention scale
``query_pre_attn_scalar ** -0.5``; local (sliding-window) and global layers by ``layer_types``;
Gemma 2's soft-capping of the attention scores and of the final logits (``c * tanh(x / c)``);
Gemma 3's q/k norms and a separate RoPE (base, scaling) for its local layers.
"""
from __future__ import annotations

import torch
from torch import nn

from pagedserve.arch_config import ArchConfig, rope_config
from pagedserve.layers.activation import act_and_mul
from pagedserve.layers.attention import Attention
from pagedserve.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedserve.layers.norm import GemmaRMSNorm
from pagedserve.layers.rotary import RotaryEmbedding
from pagedserve.layers.vocab import ParallelLMHead, VocabParallelEmbedding
from pagedserve.models.pipeline import PPMissingLayer, StageInfo, make_layers, run_stage


def gemma_layer_types(cfg: ArchConfig) -> list[str]:
    """``layer_types`` from config.json, or the pattern of configs written before transformers 5:
    Gemma 2 alternates local / global from a local layer 0; Gemma 3 has every
    ``sliding_window_pattern``-th layer global."""
    if cfg.layer_types is not None:
        return cfg.layer_types
    if cfg.architecture.startswith("Gemma2"):
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(cfg.num_layers)]
    pattern = int(cfg.hf_config.get("sliding_window_pattern", cfg.hf_config.get("_sliding_window_pattern", 6)))
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(cfg.num_layers)]


class ScaledEmbedding(VocabParallelEmbedding):
    """Token embedding times ``sqrt(hidden)`` in the weight's dtype."""

    def __init__(self, vocab_size: int, hidden: int) -> None:
        super().__init__(vocab_size, hidden)
        # rounded to the model dtype once (HF multiplies by a tensor of that dtype); a Python float
        # keeps the forward free of host tensors (CUDA graphs)
        self.normalizer = float(torch.tensor(hidden ** 0.5, dtype=self.weight.dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * self.normalizer


class GemmaAttention(nn.Module):
    def __init__(self, cfg: ArchConfig, layer_idx: int, rotary: RotaryEmbedding, sliding_window: int | None,
                 qk_norm: bool, prefix: str) -> None:
        super().__init__()
        hf = cfg.hf_config
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads,
                                          bias=bool(hf.get("attention_bias", False)), prefix=f"{prefix}.qkv_proj")
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size, self.kv_size, self.head_dim = self.qkv_proj.q_size, self.qkv_proj.kv_size, cfg.head_dim
        self.o_proj = RowParallelLinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size,
                                        bias=bool(hf.get("attention_bias", False)), prefix=f"{prefix}.o_proj")
        self.rotary = rotary
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = GemmaRMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = GemmaRMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        scalar = hf.get("query_pre_attn_scalar") or cfg.head_dim
        self.attn = Attention(layer_idx, self.num_heads, self.num_kv_heads, cfg.head_dim, float(scalar) ** -0.5,
                              sliding_window=sliding_window, logit_softcap=hf.get("attn_logit_softcapping"))

    def qkv(self, positions: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return (*self.rotary(positions, q, k), v)


class GemmaMLP(nn.Module):
    def __init__(self, cfg: ArchConfig, prefix: str) -> None:
        super().__init__()
        inter = cfg.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(cfg.hidden_size, [inter, inter], bias=False,
                                                       prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(inter, cfg.hidden_size, bias=False, prefix=f"{prefix}.down_proj")
        self.act = act_and_mul(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class GemmaDecoderLayer(nn.Module):
    """``x + post_attn_norm(attn(input_norm(x)))``, then ``+ post_ff_norm(mlp(pre_ff_norm(.)))``;
    the residual adds are fused into the next norm as in the Llama layer."""

    def __init__(self, cfg: ArchConfig, layer_idx: int, rotary: RotaryEmbedding, sliding_window: int | None,
                 qk_norm: bool) -> None:
        super().__init__()
        prefix = f"model.layers.{layer_idx}"
        self.self_attn = GemmaAttention(cfg, layer_idx, rotary, sliding_window, qk_norm, f"{prefix}.self_attn")
        self.mlp = GemmaMLP(cfg, f"{prefix}.mlp")
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(h, eps)
        self.post_attention_layernorm = GemmaRMSNorm(h, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(h, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(h, eps)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v, residual = self.pre_attention(positions, x, residual)
        return self.post_attention(self.self_attn.attn(q, k, v), residual)

    # the two halves around attention (the piecewise CUDA graphs' contract, as LlamaDecoderLayer)
    def pre_attention(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        return (*self.self_attn.qkv(positions, x), residual)

    def post_attention(self, attn_out: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.post_attention_layernorm(self.self_attn.o_proj(attn_out))
        x, residual = self.pre_feedforward_layernorm(h, residual)
        return self.post_feedforward_layernorm(self.mlp(x)), residual


class GemmaModel(nn.Module):
    def __init__(self, cfg: ArchConfig, max_position: int, qk_norm: bool, local_rope: bool) -> None:
        super().__init__()
        self.stage = stage = StageInfo(cfg.num_layers)
        self.embed_tokens = ScaledEmbedding(cfg.vocab_size, cfg.hidden_size) if stage.is_first else PPMissingLayer()
        types = gemma_layer_types(cfg)
        if cfg.rotary_dim != cfg.head_dim:
            raise ValueError(f"partial_rotary_factor {cfg.partial_rotary_factor} is not supported for Gemma")
        theta, scaling = rope_config(cfg.hf_config, "full_attention")
        self.rotary = RotaryEmbedding(cfg.head_dim, max_position, theta, scaling, cfg.max_position_embeddings)
        self.rotary_local = self.rotary
        if local_rope:  # Gemma 3: local layers have their own base (and no scaling)
            if isinstance((cfg.hf_config.get("rope_parameters") or {}).get("sliding_attention"), dict):
                l_theta, l_scaling = rope_config(cfg.hf_config, "sliding_attention")
            else:  # configs from before transformers 5
                l_theta, l_scaling = float(cfg.hf_config.get("rope_local_base_freq", 10000.0)), None
            self.rotary_local = RotaryEmbedding(cfg.head_dim, max_position, l_theta, l_scaling,
                                                cfg.max_position_embeddings)
        window = cfg.sliding_window
        self.layers = make_layers(cfg.num_layers, stage, lambda i: GemmaDecoderLayer(
            cfg, i, self.rotary_local if types[i] == "sliding_attention" else self.rotary,
            window if types[i] == "sliding_attention" else None, qk_norm))
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if stage.is_last else PPMissingLayer()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Hidden states (last stage) or ``(hidden, residual)`` for the next stage (models/pipeline.py)."""
        if self.stage.is_first:
            x, residual = self.embed_tokens(input_ids), None
        else:
            x, residual = intermediate
        x, residual = run_stage(self.layers, self.stage, positions, x, residual)
        if not self.stage.is_last:
            return x, residual
        x, _ = self.norm(x, residual)
        return x


class Gemma2ForCausalLM(nn.Module):
    packed_modules = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }
    qk_norm = False
    local_rope = False

    def __init__(self, cfg: ArchConfig, max_position: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = GemmaModel(cfg, max_position, self.qk_norm, self.local_rope)
        self.stage = self.model.stage
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size) if self.stage.is_last else PPMissingLayer()
        if cfg.tie_word_embeddings and self.stage.is_first and self.stage.is_last:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.final_softcap = cfg.hf_config.get("final_logit_softcapping") or None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate: tuple[torch.Tensor, torch.Tensor] | None = None):
        return self.model(input_ids, positions, intermediate)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head.compute_logits(hidden)
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    qk_norm = True
    local_rope = True
