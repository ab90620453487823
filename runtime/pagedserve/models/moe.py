"""The Mixture-of-Experts decoder shared by Mixtral, Qwen2-MoE and Qwen3-MoE: Llama's attention and
layer structure (``models/llama.py``) with a sparse MLP block in place of the dense MLP.

The block: router ``gate`` (replicated ``[E, H]`` linear) → :class:`~pagedserve.layers.fused_moe.FusedMoE`
(top-k of the softmax, optional renormalisation); Qwen2-MoE adds a shared expert scaled by
``sigmoid(shared_expert_gate(x))``. Layers listed in ``mlp_only_layers`` or off the
``decoder_sparse_step`` keep a dense MLP of ``intermediate_size``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedserve.arch_config import ArchConfig, MoEConfig
from pagedserve.layers.fused_moe import FusedMoE, expert_weight_target
from pagedserve.layers.linear import ReplicatedLinear
from pagedserve.layers.quantization import set_quant_config
from pagedserve.models.llama import LlamaForCausalLM, LlamaMLP


class SparseMoeBlock(nn.Module):
    def __init__(self, cfg: ArchConfig, moe: MoEConfig, prefix: str) -> None:
        super().__init__()
        with set_quant_config(None):  # the router stays in the model dtype (as in vLLM and quantized exports)
            self.gate = ReplicatedLinear(cfg.hidden_size, moe.num_experts, bias=False, prefix=f"{prefix}.gate")
        self.experts = FusedMoE(moe.num_experts, moe.top_k, cfg.hidden_size, moe.moe_intermediate_size,
                                renormalize=moe.norm_topk_prob, prefix=f"{prefix}.experts")
        self.shared_expert: LlamaMLP | None = None
        if moe.shared_expert_intermediate_size:
            self.shared_expert = LlamaMLP(cfg, prefix=f"{prefix}.shared_expert",
                                          intermediate_size=moe.shared_expert_intermediate_size)
            self.shared_expert_gate = ReplicatedLinear(cfg.hidden_size, 1, bias=False,
                                                       prefix=f"{prefix}.shared_expert_gate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.experts(x, self.gate(x))
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out


class MoeForCausalLM(LlamaForCausalLM):
    """A Llama-structured decoder whose sparse layers hold a :class:`SparseMoeBlock`."""

    #: the checkpoint's name of the sparse block when it is not ``mlp`` (Mixtral: ``block_sparse_moe``)
    checkpoint_block_name = "mlp"

    def make_mlp(self, cfg: ArchConfig, layer_idx: int, prefix: str) -> nn.Module:
        moe = cfg.moe
        if moe is None:
            raise ValueError(f"config.json: {cfg.architecture} needs num_experts / num_local_experts")
        if not moe.is_sparse(layer_idx):
            return LlamaMLP(cfg, prefix=prefix)
        block_prefix = prefix.rsplit(".", 1)[0] + f".{self.checkpoint_block_name}"
        return SparseMoeBlock(cfg, moe, block_prefix)

    def map_weight_name(self, name: str) -> tuple[str, Any] | None:
        """Checkpoint name → (parameter name, shard id) for the expert tensors (``models/loader.py``);
        None: the usual packed-module mapping applies."""
        if self.checkpoint_block_name != "mlp":
            name = name.replace(f".{self.checkpoint_block_name}.", ".mlp.")
        target = expert_weight_target(name)
        if target is not None:
            return target
        return (name, None) if self.checkpoint_block_name != "mlp" and ".mlp.gate." in name else None
