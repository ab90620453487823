"""Attention backends: write this step's K/V into the paged cache, then attend over it."""
from __future__ import annotations

import torch

from pagedserve.attention.metadata import AttentionMetadata
from pagedserve.kernels.kv_store import store_kv_ref
from pagedserve.kernels.paged_attention_ref import paged_attention_ref


class AttentionBackend:
    name = "base"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
                out: torch.Tensor | None = None, sliding_window: int | None = None,
                logit_softcap: float | None = None) -> torch.Tensor:
        """Store k/v, attend; the result [T, H, D] goes into ``out`` when given (a view of a
        static buffer: the piecewise graphs' attention output) and is returned. ``sliding_window``:
        each query sees its last ``W`` positions only (None: all); ``logit_softcap``: Gemma 2's
        ``c * tanh(s / c)`` on the scaled scores (None: off)."""
        raise NotImplementedError


class TorchAttentionBackend(AttentionBackend):
    """The plain torch reference (gather from pages, causal mask across chunks, GQA); used on CPU."""

    name = "torch"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
                out: torch.Tensor | None = None, sliding_window: int | None = None,
                logit_softcap: float | None = None) -> torch.Tensor:
        store_kv_ref(k, v, k_cache, v_cache, meta.slot_mapping)
        qsl = meta.query_start_loc_cpu if meta.query_start_loc_cpu is not None else meta.query_start_loc
        sl = meta.seq_lens_cpu if meta.seq_lens_cpu is not None else meta.seq_lens
        res = paged_attention_ref(q, k_cache, v_cache, qsl, sl, meta.block_tables, scale,
                                  sliding_window=sliding_window, logit_softcap=logit_softcap)
        return res if out is None else out.copy_(res)

