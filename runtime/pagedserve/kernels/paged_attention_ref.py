"""Torch reference for attention over the paged KV cache (any mix of prefill chunks and decodes).

Shapes: ``q [num_tokens, num_heads, head_dim]`` packed by request; ``query_start_loc [B+1]``;
``seq_lens [B]`` = tokens in the cache for each request after this step (its new tokens included,
already written); ``block_tables [B, max_blocks]``. The query token ``j`` of a request with ``Q``
new tokens and ``L`` cached ones sits at position ``p = L - Q + j`` and sees positions ``0 .. p``;
with a sliding window ``W`` only ``p - W + 1 .. p`` (the last ``W`` positions, itself included: HF's
``kv_idx > q_idx - sliding_window``). ``logit_softcap`` ``c`` (Gemma 2) maps every scaled score
``s`` to ``c * tanh(s / c)`` before the mask and the softmax.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The first ``seq_len`` cached rows of one request: [seq_len, num_kv_heads, head_dim]."""
    block_size = cache.shape[1]
    nblocks = -(-seq_len // block_size)
    return cache[block_table[:nblocks].long()].flatten(0, 1)[:seq_len]


def attention_mask(kv_len: int, n_q: int, sliding_window: int | None, device: torch.device) -> torch.Tensor:
    """[Q, L] bool: which cached positions each of the last ``n_q`` positions sees."""
    pos_q = torch.arange(kv_len - n_q, kv_len, device=device)[:, None]
    pos_k = torch.arange(kv_len, device=device)[None, :]
    mask = pos_k <= pos_q
    if sliding_window is not None and sliding_window > 0:
        mask &= pos_k > pos_q - sliding_window
    return mask


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                        block_tables: torch.Tensor, scale: float, sliding_window: int | None = None,
                        logit_softcap: float | None = None) -> torch.Tensor:
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
        mask = attention_mask(kv_len, n_q, sliding_window, q.device)  # [Q, L]
        if logit_softcap:
            s = torch.matmul(qi.float(), k.float().permute(1, 2, 0)) * scale  # fp32 like the kernels
            s = torch.tanh(s / logit_softcap) * logit_softcap
            p = s.masked_fill(~mask, float("-inf")).softmax(-1)
            o = torch.matmul(p, v.float().transpose(0, 1)).to(q.dtype)
        else:
            o = F.scaled_dot_product_attention(qi, k.transpose(0, 1), v.transpose(0, 1),
                                               attn_mask=mask, scale=scale)
        out[start:end] = o.transpose(0, 1)
    return out
