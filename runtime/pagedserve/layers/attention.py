"""The attention layer: reads the forward context and calls the chosen backend."""
from __future__ import annotations

import torch
from torch import nn

from pagedserve.attention.backend import AttentionBackend
from pagedserve.attention.metadata import AttentionMetadata
from pagedserve.forward_context import get_forward_context


class Attention(nn.Module):
    """Paged attention of one decoder layer. ``sliding_window``: this layer sees the last ``W``
    positions only (None: all; Mistral, Gemma's local layers); ``logit_softcap``: Gemma 2's
    ``c * tanh(s / c)`` on the scaled scores (None: off)."""

    def __init__(self, layer_idx: int, num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
                 sliding_window: int | None = None, logit_softcap: float | None = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        self.sliding_window = sliding_window if sliding_window and sliding_window > 0 else None
        self.logit_softcap = logit_softcap or None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [T, H, D], k/v: [T, KVH, D] → [T, H * D]."""
        ctx = get_forward_context()
        if ctx.attn_metadata is None:  # profiling run without a cache
            return torch.zeros(q.shape[0], self.num_heads * self.head_dim, dtype=q.dtype, device=q.device)
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        out = self.attend(ctx.backend, q, k, v, k_cache, v_cache, ctx.attn_metadata)
        return out.reshape(q.shape[0], self.num_heads * self.head_dim)

    def attend(self, backend: AttentionBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """The backend call with this layer's scale, window and cap (also used by the piecewise graphs)."""
        return backend.forward(q, k, v, k_cache, v_cache, meta, self.scale, out=out,
                               sliding_window=self.sliding_window, logit_softcap=self.logit_softcap)
