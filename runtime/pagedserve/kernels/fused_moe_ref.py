"""Torch reference of the Mixture-of-Experts MLP (no Triton import: the CPU path of
``layers/fused_moe.py`` and the oracle of ``kernels/fused_moe.py``).

Layouts (vLLM's): ``w13 [E, 2I, H]`` holds each expert's gate rows then its up rows, ``w2 [E, H, I]``
its down projection; ``topk_ids [T, K]`` / ``topk_weights [T, K]`` (fp32) the experts each token
goes to and their weights. ``out[t] = sum_k w[t, k] * down_e(silu(gate_e(x_t)) * up_e(x_t))``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def select_experts(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the experts (fp32), the ``top_k`` largest, optionally renormalised to sum to 1
    (Mixtral always, Qwen-MoE with ``norm_topk_prob``) → (weights fp32 [T, K], ids int32 [T, K])."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


def fused_experts_ref(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                      topk_ids: torch.Tensor) -> torch.Tensor:
    """Expert by expert over the tokens routed to it (as HF's eager experts loop); result in x's dtype.

    While a CUDA graph is being captured (the torch attention backend on a GPU without
    ``enforce_eager``), every expert runs on every token with zero weights for the unrouted ones:
    no data-dependent shapes, no host sync."""
    out = torch.zeros_like(x)
    ids = topk_ids.long()
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        dense = torch.zeros(x.shape[0], w13.shape[0], dtype=torch.float32, device=x.device)
        dense.scatter_(1, ids, topk_weights.float())
        for e in range(w13.shape[0]):
            gate, up = F.linear(x, w13[e]).chunk(2, dim=-1)
            out += (F.linear(F.silu(gate) * up, w2[e]) * dense[:, e, None]).to(out.dtype)
        return out
    for e in torch.unique(ids).tolist():
        tok, slot = torch.where(ids == e)
        gate, up = F.linear(x[tok], w13[e]).chunk(2, dim=-1)
        h = F.linear(F.silu(gate) * up, w2[e])
        out.index_add_(0, tok, (h * topk_weights[tok, slot, None]).to(out.dtype))
    return out


def moe_align_block_size_ref(topk_ids: torch.Tensor, block_size: int, num_experts: int
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (token, slot) pairs sorted by expert, each expert's run padded to a multiple of
    ``block_size`` (pad entries hold ``topk_ids.numel()``).

    Returns ``sorted_ids [P_max]`` (flat pair index ``t * K + k``), ``expert_ids [P_max / block]``
    (the expert of each block; blocks past the end hold -1) and ``num_post_pad [1]`` (entries in
    use). ``P_max = numel + E * (block_size - 1)`` rounded up to a block: fixed by the shapes, so
    the whole thing is device-side (no host sync; CUDA-graph capturable)."""
    flat = topk_ids.reshape(-1).long()
    n, dev = flat.numel(), flat.device
    p_max = -(-(n + num_experts * (block_size - 1)) // block_size) * block_size
    counts = torch.zeros(num_experts, dtype=torch.long, device=dev).index_add_(
        0, flat, torch.ones_like(flat))
    padded = (counts + block_size - 1) // block_size * block_size
    ends = torch.cumsum(padded, 0)
    starts = ends - padded
    order = torch.sort(flat, stable=True).indices  # pair indices grouped by expert, in token order
    sorted_experts = flat[order]
    first = torch.cumsum(counts, 0) - counts  # each expert's first position in `order`
    rank = torch.arange(n, device=dev) - first[sorted_experts]
    sorted_ids = torch.full((p_max,), n, dtype=torch.int32, device=dev)
    sorted_ids[starts[sorted_experts] + rank] = order.to(torch.int32)
    block_starts = torch.arange(0, p_max, block_size, device=dev)
    expert_ids = torch.searchsorted(ends, block_starts, right=True)
    expert_ids = torch.where(expert_ids < num_experts, expert_ids, -1).to(torch.int32)
    return sorted_ids, expert_ids, ends[-1:].to(torch.int32)
