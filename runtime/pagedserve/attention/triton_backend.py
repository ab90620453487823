"""Triton attention backend: store K/V, paged decode kernel on the decode tokens, paged prefill
kernel on the prefill chunks, one output tensor.

Requests are ordered decodes first (``meta.num_decodes`` requests of one token each), then prefill
chunks, so the decode part is ``[:num_decodes]`` of q / seq_lens / block_tables and the prefill
part is the rest; both slices use only the Python ints in the metadata (no host syncs).

CUDA graphs: the decode launch grid is ``(num_decodes, KVH, num_splits)``; ``num_splits`` comes
from :func:`decode_num_splits` of ``max_seq_len_bound`` when that is set (a static bound, e.g.
``max_model_len``), so it does not change between replays, and from the batch's ``max_seq_len``
otherwise (eager mode). ``num_splits`` can also be pinned outright with ``decode_num_splits``.
The prefill grid uses ``max_query_len`` (or ``max_query_len_bound`` when set).
"""
from __future__ import annotations

import torch

from pagedserve.attention.backend import AttentionBackend
from pagedserve.attention.metadata import AttentionMetadata
from pagedserve.kernels.decode_attention import decode_num_splits, paged_decode_attention
from pagedserve.kernels.kv_store_triton import store_kv
from pagedserve.kernels.prefill_attention import paged_prefill_attention


class TritonAttentionBackend(AttentionBackend):
    name = "triton"

    def __init__(self, max_seq_len_bound: int | None = None, decode_splits: int | None = None,
                 max_query_len_bound: int | None = None) -> None:
        #: static bound on any request's context length; fixes the decode split count (CUDA graphs)
        self.max_seq_len_bound = max_seq_len_bound
        #: pin the decode split count outright (overrides the bound-derived rule)
        self.decode_splits = decode_splits
        #: static bound on the prefill query length (sizes the prefill grid; for graph capture)
        self.max_query_len_bound = max_query_len_bound
        #: extra launch kwargs (tile_n / num_warps / num_stages; block_m / block_n / ...)
        self.decode_kwargs: dict = {}
        self.prefill_kwargs: dict = {}

    def num_decode_splits(self, num_decodes: int, num_kv_heads: int, max_seq_len: int,
                          device: torch.device | str, sliding_window: int | None = None) -> int:
        if self.decode_splits is not None:
            return self.decode_splits
        bound = self.max_seq_len_bound if self.max_seq_len_bound is not None else max_seq_len
        if sliding_window is not None and sliding_window > 0:  # a window bounds every context read
            bound = min(bound, sliding_window)
        return decode_num_splits(num_decodes, num_kv_heads, max(1, bound), device)

    def new_output(self, q: torch.Tensor) -> torch.Tensor:
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
                out: torch.Tensor | None = None, sliding_window: int | None = None,
                logit_softcap: float | None = None) -> torch.Tensor:
        store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        T = q.shape[0]
        if out is None:
            out = self.new_output(q)
        nd = meta.num_decodes
        n_pre = meta.num_prefill_tokens
        if nd > 0:
            splits = self.num_decode_splits(nd, k_cache.shape[2], meta.max_seq_len, q.device, sliding_window)
            paged_decode_attention(q[:nd], k_cache, v_cache, meta.block_tables[:nd], meta.seq_lens[:nd],
                                   scale, out=out[:nd], num_splits=splits, sliding_window=sliding_window,
                                   logit_softcap=logit_softcap, **self.decode_kwargs)
        if n_pre > 0:
            max_q = self.max_query_len_bound if self.max_query_len_bound is not None else meta.max_query_len
            paged_prefill_attention(q, k_cache, v_cache, meta.query_start_loc[nd:], meta.seq_lens[nd:],
                                    meta.block_tables[nd:], scale, max_q, out=out, sliding_window=sliding_window,
                                    logit_softcap=logit_softcap, **self.prefill_kwargs)
        if nd + n_pre < T:  # padding tokens past the real ones: keep them finite
            out[nd + n_pre:].zero_()
        return out
