"""The experts of a Mixture-of-Experts MLP, stored stacked: ``w13 [E, 2I, H]`` (each expert's gate
rows then its up rows) and ``w2 [E, H, I]``.

Routing: softmax of the router logits, the top-k experts, optionally renormalised
(``kernels/fused_moe_ref.select_experts``). The product runs in the fused Triton kernel on GPU
(``kernels/fused_moe.py``, installed by ``worker/fusion.py``) and in the torch reference otherwise.

Tensor parallelism shards every expert's intermediate dimension: ``w13`` column-wise (rank r holds
gate and up rows ``[r I/tp, (r+1) I/tp)``), ``w2`` row-wise, and the partial outputs are summed with
an all-reduce.

Checkpoint layouts the weight loader reads (``shard_id``):

- per expert, 2-D (published checkpoints, and what transformers 5 ``save_pretrained`` writes):
  ``experts.{e}.w1/w3/w2`` (Mixtral) or ``experts.{e}.gate_proj/up_proj/down_proj`` (Qwen-MoE),
  shard id ``(e, "w1" | "w3" | "w2")``;
- stacked, 3-D (transformers 5's in-memory ``experts.gate_up_proj [E, 2I, H]`` and
  ``experts.down_proj [E, H, I]``): shard id None.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import nn

from pagedserve.distributed.parallel_state import get_tp_rank, get_tp_size, tp_all_reduce
from pagedserve.kernels.fused_moe_ref import fused_experts_ref, select_experts

#: checkpoint projection name → our shard name (w1 = gate, w3 = up, w2 = down)
EXPERT_PROJ = {"w1": "w1", "w3": "w3", "w2": "w2", "gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
_PER_EXPERT = re.compile(r"^(?P<pre>.*\.experts)\.(?P<e>\d+)\.(?P<proj>w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$")
_STACKED = re.compile(r"^(?P<pre>.*\.experts)\.(?P<proj>gate_up_proj|down_proj)$")


def expert_weight_target(name: str) -> tuple[str, Any] | None:
    """A checkpoint expert tensor's (parameter name, shard id), or None if ``name`` is not one."""
    m = _PER_EXPERT.match(name)
    if m:
        shard = EXPERT_PROJ[m["proj"]]
        return f"{m['pre']}.{'w2' if shard == 'w2' else 'w13'}_weight", (int(m["e"]), shard)
    m = _STACKED.match(name)
    if m:
        return f"{m['pre']}.{'w13' if m['proj'] == 'gate_up_proj' else 'w2'}_weight", None
    return None


def _read(source: Any, index: tuple) -> torch.Tensor:
    return source[index]


class FusedMoE(nn.Module):
    """``forward(x [T, H], router_logits [T, E]) -> [T, H]``: the routed experts' weighted sum."""

    def __init__(self, num_experts: int, top_k: int, hidden_size: int, intermediate_size: int,
                 renormalize: bool, reduce_results: bool = True, prefix: str = "") -> None:
        super().__init__()
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        if intermediate_size % self.tp_size:
            raise ValueError(f"moe_intermediate_size {intermediate_size} is not divisible by "
                             f"tensor_parallel_size {self.tp_size}")
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, renormalize
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.local_inter = intermediate_size // self.tp_size
        self.reduce_results, self.prefix = reduce_results, prefix
        self.fused: Callable[..., torch.Tensor] | None = None  # kernels.fused_moe.fused_experts on GPU
        e, i, h = num_experts, self.local_inter, hidden_size
        self.w13_weight = nn.Parameter(torch.empty(e, 2 * i, h), requires_grad=False)
        self.w2_weight = nn.Parameter(torch.empty(e, h, i), requires_grad=False)
        for p, shards in ((self.w13_weight, ("w1", "w3")), (self.w2_weight, ("w2",))):
            p.weight_loader = self.weight_loader
            p.expected_shards = {(x, s) for x in range(e) for s in shards}  # checked by models/loader.py
            p.loaded_shards = set()

    def unsharded_shape(self, param: torch.Tensor) -> tuple[int, ...]:
        """The TP=1 (stacked checkpoint) shape of ``param``, for dummy weights."""
        e, i, h = self.num_experts, self.intermediate_size, self.hidden_size
        return (e, 2 * i, h) if param is self.w13_weight else (e, h, i)

    def weight_loader(self, param: nn.Parameter, source: Any, shard_id: tuple[int, str] | None = None) -> None:
        i, r = self.local_inter, self.tp_rank
        own = slice(r * i, (r + 1) * i)  # this rank's slice of the intermediate dimension
        if shard_id is None:  # stacked [E, 2I, H] / [E, H, I]
            shape = tuple(source.get_shape() if hasattr(source, "get_shape") else source.shape)
            if shape != self.unsharded_shape(param):
                raise ValueError(f"{self.prefix}: stacked expert tensor of shape {shape}, expected "
                                 f"{self.unsharded_shape(param)}")
            if param is self.w13_weight:
                full = self.intermediate_size
                value = torch.cat([_read(source, (slice(None), own)),
                                   _read(source, (slice(None), slice(full + r * i, full + (r + 1) * i)))], dim=1)
            else:
                value = _read(source, (slice(None), slice(None), own))
            param.data.copy_(value.to(param.dtype))
            param.loaded_shards |= param.expected_shards
            return
        expert, proj = shard_id
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"{self.prefix}: checkpoint has expert {expert}, the model has {self.num_experts}")
        if proj == "w2":
            value, dst = _read(source, (slice(None), own)), param.data[expert]
        else:
            value = _read(source, (own,))
            dst = param.data[expert].narrow(0, 0 if proj == "w1" else i, i)
        if tuple(value.shape) != tuple(dst.shape):
            raise ValueError(f"{self.prefix}: expert {expert} {proj} slice has shape {tuple(value.shape)}, "
                             f"expected {tuple(dst.shape)}")
        dst.copy_(value.to(param.dtype))
        param.loaded_shards.add((expert, proj))

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        topk_weights, topk_ids = select_experts(router_logits, self.top_k, self.renormalize)
        experts = self.fused or fused_experts_ref
        out = experts(x, self.w13_weight, self.w2_weight, topk_weights, topk_ids)
        if self.reduce_results and self.tp_size > 1:
            out = tp_all_reduce(out)
        return out
