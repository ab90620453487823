"""The attention layer: reads the forward context and calls the chosen backend."""
from __future__ import annotations

import torch
from torch import nn

from pagedserve.forward_context import get_forward_context


class Attention(nn.Module):
    def __init__(self, layer_idx: int, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [T, H, D], k/v: [T, KVH, D] → [T, H * D]."""
        ctx = get_forward_context()
        if ctx.attn_metadata is None:  # profiling run without a cache
            return torch.zeros(q.shape[0], self.num_heads * self.head_dim, dtype=q.dtype, device=q.device)
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        out = ctx.backend.forward(q, k, v, k_cache, v_cache, ctx.attn_metadata, self.scale)
        return out.reshape(q.shape[0], self.num_heads * self.head_dim)
