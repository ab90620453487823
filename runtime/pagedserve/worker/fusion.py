"""Switch the model's norm / rotary / activation layers to the fused Triton kernels (CUDA only)."""
from __future__ import annotations

from torch import nn

from pagedserve.layers.activation import SiluAndMul
from pagedserve.layers.norm import RMSNorm
from pagedserve.layers.rotary import RotaryEmbedding


def install_fused_kernels(model: nn.Module) -> int:
    from pagedserve.kernels.activation import silu_and_mul
    from pagedserve.kernels.rmsnorm import rms_norm_fused
    from pagedserve.kernels.rotary import rotary_fused

    n = 0
    for m in model.modules():
        if isinstance(m, RMSNorm):
            m.fused = rms_norm_fused
        elif isinstance(m, RotaryEmbedding):
            m.fused = rotary_fused
        elif isinstance(m, SiluAndMul):
            m.fused = silu_and_mul
        else:
            continue
        n += 1
    return n
