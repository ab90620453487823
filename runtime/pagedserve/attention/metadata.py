"""Attention metadata: the tensors the attention kernels read for one forward pass.

Requests are ordered decodes first (one query token each), then prefill chunks, so a backend
can run a decode kernel on ``[:num_decode_tokens]`` and a prefill kernel on the rest.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64, -1 = padding
    query_start_loc: torch.Tensor  # [B + 1] int32
    seq_lens: torch.Tensor  # [B] int32: cached tokens after this step
    block_tables: torch.Tensor  # [B, max_blocks] int32
    max_query_len: int
    max_seq_len: int
    num_decodes: int  # requests [0, num_decodes) have one query token each
    num_prefill_tokens: int
    query_start_loc_cpu: torch.Tensor | None = None
    seq_lens_cpu: torch.Tensor | None = None

    @property
    def num_decode_tokens(self) -> int:
        return self.num_decodes
