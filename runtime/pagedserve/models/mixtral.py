"""Mixtral (``MixtralForCausalLM``): Mistral's attention, every layer a sparse block of
``num_local_experts`` experts (``experts.{e}.w1/w3/w2``), top-k routing always renormalised."""
from __future__ import annotations

from pagedserve.models.moe import MoeForCausalLM


class MixtralForCausalLM(MoeForCausalLM):
    checkpoint_block_name = "block_sparse_moe"  # transformers 5 renames it to ``mlp`` in memory; both load
