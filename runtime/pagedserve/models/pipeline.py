"""Pipeline stages of a decoder model: which layers a stage builds, and the placeholders that
stand for the modules it does not hold (no parameters, so their weights are never loaded).

A stage's forward takes ``intermediate`` (the previous stage's ``(hidden, residual)``) instead
of token ids when it is not the first stage, and returns ``(hidden, residual)`` instead of the
final-normed hidden states when it is not the last; the runner moves them between stages.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from pagedserve.distributed.parallel_state import get_pp_rank, get_pp_size, stage_layers


class PPMissingLayer(nn.Module):
    """A module of another pipeline stage: holds nothing; calling it is a bug."""

    def forward(self, *args, **kwargs):  # noqa: ANN002
        raise RuntimeError("this module lives on another pipeline stage")


class StageInfo:
    """This process's stage of a model with ``num_layers`` decoder layers (read at construction)."""

    def __init__(self, num_layers: int) -> None:
        self.rank, self.size = get_pp_rank(), get_pp_size()
        self.start, self.end = stage_layers(num_layers, self.rank, self.size)
        self.is_first, self.is_last = self.rank == 0, self.rank == self.size - 1

    def owns(self, layer_idx: int) -> bool:
        return self.start <= layer_idx < self.end


def make_layers(num_layers: int, stage: StageInfo, build) -> nn.ModuleList:  # noqa: ANN001
    """``build(i)`` for this stage's layers, placeholders for the others (indices keep their names)."""
    return nn.ModuleList(build(i) if stage.owns(i) else PPMissingLayer() for i in range(num_layers))


_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def skip_weight(name: str, stage: StageInfo) -> bool:
    """True for a checkpoint tensor that belongs to another stage."""
    if stage.size == 1:
        return False
    m = _LAYER.match(name)
    if m is not None:
        return not stage.owns(int(m.group(1)))
    if name.startswith("model.embed_tokens."):
        return not stage.is_first
    if name.startswith(("model.norm.", "lm_head.")):
        return not stage.is_last
    return False


def run_stage(layers: nn.ModuleList, stage: StageInfo, positions: torch.Tensor, x: torch.Tensor,
              residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    for i in range(stage.start, stage.end):
        x, residual = layers[i](positions, x, residual)
    return x, residual
