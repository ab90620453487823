"""The per-forward-pass context the attention layers read (metadata and KV cache), set by the
model runner around each model call — so model code stays free of plumbing."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from pagedserve.attention.backend import AttentionBackend
from pagedserve.attention.metadata import AttentionMetadata


@dataclass
class ForwardContext:
    attn_metadata: AttentionMetadata | None
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    backend: AttentionBackend


_CONTEXT: ForwardContext | None = None


def get_forward_context() -> ForwardContext:
    assert _CONTEXT is not None, "attention called outside set_forward_context"
    return _CONTEXT


@contextmanager
def set_forward_context(ctx: ForwardContext) -> Iterator[None]:
    global _CONTEXT
    prev, _CONTEXT = _CONTEXT, ctx
    try:
        yield
    finally:
        _CONTEXT = prev
