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


class GeluAndMul(nn.Module):
    """``gelu(gate) * up`` (GeGLU; Gemma's ``gelu_pytorch_tanh`` is ``approximate="tanh"``)."""

    def __init__(self, approximate: str = "tanh") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.gelu(gate, approximate=self.approximate) * up


def act_and_mul(hidden_act: str) -> nn.Module:
    """The gated activation of an MLP by HF's ``hidden_act`` name; ValueError for others."""
    if hidden_act == "silu":
        return SiluAndMul()
    if hidden_act in ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new"):
        return GeluAndMul("tanh")
    if hidden_act == "gelu":
        return GeluAndMul("none")
    raise ValueError(f"hidden_act {hidden_act!r} is not supported (silu, gelu, gelu_pytorch_tanh)")
