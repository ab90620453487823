"""Vocabulary-parallel token embedding and LM head."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedserve.distributed.parallel_state import (get_tp_rank, get_tp_size, tp_all_gather_last_dim,
                                                    tp_all_reduce)
from pagedserve.utils import cdiv


class VocabParallelEmbedding(nn.Module):
    """Each rank holds a contiguous slice of the vocabulary (padded to divide evenly)."""

    def __init__(self, vocab_size: int, hidden: int) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        self.vocab_size = vocab_size
        self.shard = cdiv(vocab_size, self.tp_size)
        self.start = self.tp_rank * self.shard
        self.weight = nn.Parameter(torch.empty(self.shard, hidden), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, source: Any, shard_id: Any = None) -> None:
        rows = min(self.shard, self.vocab_size - self.start)
        value = source[self.start:self.start + rows]
        if tuple(value.shape[1:]) != tuple(param.shape[1:]):
            raise ValueError(f"embedding shape {tuple(value.shape)} does not match {tuple(param.shape)}")
        param.data[:rows].copy_(value.to(param.dtype))
        param.data[rows:].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        mask = (local < 0) | (local >= self.shard)
        out = F.embedding(local.masked_fill(mask, 0), self.weight)
        out.masked_fill_(mask.unsqueeze(-1), 0)
        return tp_all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Hidden states → logits over the full vocabulary (gathered across ranks)."""

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.weight)
        if self.tp_size > 1:
            logits = tp_all_gather_last_dim(logits)
        return logits[..., :self.vocab_size]
