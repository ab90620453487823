"""Qwen3-MoE (``Qwen3MoeForCausalLM``, e.g. Qwen3-30B-A3B): Qwen3 attention (q/k RMSNorm, no bias),
sparse blocks without a shared expert; ``norm_topk_prob`` renormalises the top-k weights;
``decoder_sparse_step`` / ``mlp_only_layers`` choose the sparse layers."""
from __future__ import annotations

from pagedserve.models.moe import MoeForCausalLM


class Qwen3MoeForCausalLM(MoeForCausalLM):
    pass
