"""Torch reference for attention over the paged KV cache (any mix of prefill chunks and decodes).

Shapes: ``q [num_tokens, num_heads, head_dim]`` packed by request; ``query_start_loc [B+1]``;
``seq_lens [B]`` = tokens in the cache for each request after this step (its new tokens included,
already written); ``block_tables [B, max_blocks]``. The query token ``j`` of a request with ``Q``
new tokens and ``L`` cached ones sits at position ``L - Q + j`` and sees positions ``0 .. L - Q + j``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The first ``seq_len`` cached rows of one request: [seq_len, num_kv_heads, head_dim]."""
    block_size = cache.shape[1]
    nblocks = -(-seq_len // block_size)
    return cache[block_table[:nblocks].long()].flatten(0, 1)[:seq_len]


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                        block_tables: torch.Tensor, scale: float) -> torch.Tensor:
    out = torch.empty_like(q)
    num_heads, num_kv_heads = q.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    qsl, sl = query_start_loc.tolist(), seq_lens.tolist()
    for i in range(len(sl)):
        start, end, kv_len = qsl[i], qsl[i + 1], sl[i]
        if end == start:
            continue
        n_q = end - start
        k = gather_kv(k_cache, block_tables[i], kv_len).to(q.dtype)
        v = gather_kv(v_cache, block_tables[i], kv_len).to(q.dtype)
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        qi = q[start:end].transpose(0, 1)  # [H, Q, D]
        pos_q = torch.arange(kv_len - n_q, kv_len, device=q.device)
        mask = torch.arange(kv_len, device=q.device)[None, :] <= pos_q[:, None]  # [Q, L]
        o = F.scaled_dot_product_attention(qi, k.transpose(0, 1), v.transpose(0, 1),
                                           attn_mask=mask, scale=scale)
        out[start:end] = o.transpose(0, 1)
    return out
