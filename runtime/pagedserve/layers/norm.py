"""RMSNorm with an optional fused residual add."""
from __future__ import annotations

import torch
from torch import nn


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Reference RMSNorm, computed in float32 like HF's LlamaRMSNorm."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden), requires_grad=False)
        self.fused = None  # set to a fused kernel (x, residual, weight, eps, quant) by the runner on GPU
        self.quant_out = False  # with the fused kernel: return an fp8 Fp8Act (the next linear is fp8)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.fused is not None:
            return self.fused(x, residual, self.weight, self.eps, self.quant_out)
        if residual is None:
            return rms_norm_ref(x, self.weight, self.eps)
        x = x + residual
        return rms_norm_ref(x, self.weight, self.eps), x


def gemma_rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm: scale by ``1 + weight``, all in float32 (as HF's Gemma2RMSNorm), then cast."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * (1.0 + weight.float())).to(x.dtype)


class GemmaRMSNorm(nn.Module):
    """RMSNorm with a ``(1 + w)`` scale (Gemma 2/3; the checkpoint stores ``w``, zero = identity),
    with the same optional fused residual add as :class:`RMSNorm`. Not an :class:`RMSNorm`
    subclass on purpose: the fused Llama-style kernel must not replace it."""

    def __init__(self, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(hidden), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return gemma_rms_norm_ref(x, self.weight, self.eps)
        x = x + residual
        return gemma_rms_norm_ref(x, self.weight, self.eps), x
