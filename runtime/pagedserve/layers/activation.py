"""SiLU-and-multiply (SwiGLU) activation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


class SiluAndMul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fused = None  # a fused kernel on GPU, set by the runner
        self.quant_out = False  # with the fused kernel: return an fp8 Fp8Act (the next linear is fp8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.fused(x, quant=self.quant_out)
        return silu_and_mul_ref(x)
