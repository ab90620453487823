"""Qwen2-MoE (``Qwen2MoeForCausalLM``, e.g. Qwen1.5-MoE-A2.7B): Qwen2 attention (qkv bias), sparse
blocks of ``num_experts`` experts plus a shared expert gated by ``sigmoid(shared_expert_gate(x))``;
``norm_topk_prob`` renormalises the top-k weights; ``decoder_sparse_step`` / ``mlp_only_layers``
choose the sparse layers."""
from __future__ import annotations

from pagedserve.models.moe import MoeForCausalLM


class Qwen2MoeForCausalLM(MoeForCausalLM):
    pass
