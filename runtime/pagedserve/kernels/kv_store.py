"""Write new keys/values into the paged KV cache at their slots (``slot = block * block_size + offset``).

KV cache layout, per layer: ``k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]``.
A negative slot (padding in a CUDA-graph batch) is skipped.

This module is Triton-free so that importing the engine (``attention/backend.py`` imports
``store_kv_ref``) never imports Triton; the Triton ``store_kv`` lives in
:mod:`pagedserve.kernels.kv_store_triton` (which imports this module, never the reverse).
"""
from __future__ import annotations

import torch


def fp8_limit(cache_dtype: torch.dtype) -> float | None:
    """The largest finite value of an fp8 cache (K/V are clamped to it: e4m3 has no infinity, and
    an fp8 KV cache uses scale 1), None for other dtypes."""
    return float(torch.finfo(cache_dtype).max) if cache_dtype.itemsize == 1 and cache_dtype.is_floating_point else None


def store_kv_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
    """k, v: [num_tokens, num_kv_heads, head_dim]; slot_mapping: [num_tokens] (int64)."""
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    kc = k_cache.view(-1, *k_cache.shape[2:])
    vc = v_cache.view(-1, *v_cache.shape[2:])
    k, v = k[valid], v[valid]
    limit = fp8_limit(kc.dtype)
    if limit is not None:
        k, v = k.float().clamp(-limit, limit), v.float().clamp(-limit, limit)
    kc[slots] = k.to(kc.dtype)
    vc[slots] = v.to(vc.dtype)

