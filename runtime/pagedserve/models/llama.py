"""Llama-family decoder (Llama 2/3/3.1, SmolLM2, Mistral with its sliding window, Qwen2 with qkv bias,
Qwen3 with q/k norm; Phi-3 in phi3.py).

One implementation, switched by :class:`ArchConfig` flags. Inputs are flat token batches
(``[num_tokens]``) with positions; attention goes through the paged KV cache.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pagedserve.distributed.parallel_state import get_tp_size
from pagedserve.layers.activation import act_and_mul
from pagedserve.layers.attention import Attention
from pagedserve.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedserve.layers.norm import RMSNorm
from pagedserve.layers.rotary import RotaryEmbedding
from pagedserve.layers.vocab import ParallelLMHead, VocabParallelEmbedding
from pagedserve.arch_config import ArchConfig
from pagedserve.models.pipeline import PPMissingLayer, StageInfo, make_layers, run_stage

#: a non-first pipeline stage's input / a non-last stage's output: (hidden, residual)
Intermediate = tuple[torch.Tensor, torch.Tensor]


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ArchConfig, layer_idx: int, rotary: RotaryEmbedding, prefix: str = "") -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads,
                                          bias=cfg.qkv_bias, prefix=f"{prefix}.qkv_proj")
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size, self.kv_size, self.head_dim = self.qkv_proj.q_size, self.qkv_proj.kv_size, cfg.head_dim
        self.o_proj = RowParallelLinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False,
                                        prefix=f"{prefix}.o_proj")
        self.rotary = rotary
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.qk_norm = cfg.qk_norm
        self.attn = Attention(layer_idx, self.num_heads, self.num_kv_heads, cfg.head_dim, cfg.head_dim ** -0.5,
                              sliding_window=cfg.layer_sliding_window(layer_idx))

    def qkv(self, positions: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projection, q/k norm and rotary: the attention inputs [T, H, D], [T, KVH, D], [T, KVH, D]."""
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return (*self.rotary(positions, q, k), v)

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.attn(*self.qkv(positions, x)))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ArchConfig, prefix: str = "", intermediate_size: int | None = None) -> None:
        super().__init__()
        inter = intermediate_size or cfg.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(cfg.hidden_size, [inter, inter], bias=cfg.mlp_bias,
                                                       prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(inter, cfg.hidden_size, bias=cfg.mlp_bias, prefix=f"{prefix}.down_proj")
        self.act = act_and_mul(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


#: (cfg, layer index, prefix) → the layer's MLP module (a Mixture-of-Experts block in models/moe.py)
MakeMLP = Callable[[ArchConfig, int, str], nn.Module]


def default_mlp(cfg: ArchConfig, layer_idx: int, prefix: str) -> nn.Module:
    return LlamaMLP(cfg, prefix=prefix)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ArchConfig, layer_idx: int, rotary: RotaryEmbedding, prefix: str = "",
                 make_mlp: MakeMLP | None = None) -> None:
        super().__init__()
        prefix = prefix or f"model.layers.{layer_idx}"
        self.self_attn = LlamaAttention(cfg, layer_idx, rotary, prefix=f"{prefix}.self_attn")
        self.mlp = (make_mlp or default_mlp)(cfg, layer_idx, f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v, residual = self.pre_attention(positions, x, residual)
        return self.post_attention(self.self_attn.attn(q, k, v), residual)

    # The two halves around attention (piecewise CUDA graphs capture these; attention runs eagerly).
    def pre_attention(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        return (*self.self_attn.qkv(positions, x), residual)

    def post_attention(self, attn_out: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.post_attention_layernorm(self.self_attn.o_proj(attn_out), residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ArchConfig, max_position: int, make_mlp: MakeMLP | None = None) -> None:
        super().__init__()
        self.stage = stage = StageInfo(cfg.num_layers)
        self.embed_tokens = (VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size) if stage.is_first
                             else PPMissingLayer())
        if cfg.rotary_dim != cfg.head_dim and not cfg.architecture.startswith("Phi3"):
            raise ValueError(f"partial_rotary_factor {cfg.partial_rotary_factor} is not supported for "
                             f"{cfg.architecture} (only Phi3ForCausalLM rotates part of each head)")
        self.rotary = RotaryEmbedding(cfg.head_dim, max_position, cfg.rope_theta, cfg.rope_scaling,
                                      cfg.max_position_embeddings, rotary_dim=cfg.rotary_dim)
        self.layers = make_layers(cfg.num_layers, stage, lambda i: LlamaDecoderLayer(
            cfg, i, self.rotary, prefix=f"model.layers.{i}", make_mlp=make_mlp))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if stage.is_last else PPMissingLayer()
        # EAGLE-3 (worker/eagle_proposer.py): the inputs of these layers are kept, concatenated in this
        # order, on ``aux_hidden_states`` after each forward; empty (the plain path) otherwise
        self.aux_hidden_state_layers: tuple[int, ...] = ()
        self.aux_hidden_states: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, intermediate: Intermediate | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor | Intermediate:
        if self.aux_hidden_state_layers:  # (speculative decoding is refused with PP > 1)
            return self._forward_aux(input_ids, positions)
        if self.stage.is_first:
            x, residual = (self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds), None
        else:
            x, residual = intermediate
        x, residual = run_stage(self.layers, self.stage, positions, x, residual)
        if not self.stage.is_last:
            return x, residual
        x, _ = self.norm(x, residual)
        return x

    def _forward_aux(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        residual = None
        kept: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            if i in self.aux_hidden_state_layers:
                kept[i] = x.clone() if residual is None else x + residual  # the residual stream entering layer i
            x, residual = layer(positions, x, residual)
        self.aux_hidden_states = torch.cat([kept[i] for i in self.aux_hidden_state_layers], dim=-1)
        x, _ = self.norm(x, residual)
        return x


class LlamaForCausalLM(nn.Module):
    # checkpoint name fragment → (our fused parameter fragment, shard id)
    packed_modules = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, cfg: ArchConfig, max_position: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.tp_size = get_tp_size()
        self.model = LlamaModel(cfg, max_position, make_mlp=self.make_mlp)
        self.stage = self.model.stage
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size) if self.stage.is_last else PPMissingLayer()
        if cfg.tie_word_embeddings and self.stage.is_first and self.stage.is_last:
            self.lm_head.weight = self.model.embed_tokens.weight

    def make_mlp(self, cfg: ArchConfig, layer_idx: int, prefix: str) -> nn.Module:
        """Layer ``layer_idx``'s MLP (subclasses: a Mixture-of-Experts block)."""
        return default_mlp(cfg, layer_idx, prefix)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, intermediate: Intermediate | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor | Intermediate:
        return self.model(input_ids, positions, intermediate, inputs_embeds)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)


class MistralForCausalLM(LlamaForCausalLM):
    pass


class Qwen2ForCausalLM(LlamaForCausalLM):
    pass


class Qwen3ForCausalLM(LlamaForCausalLM):
    pass
