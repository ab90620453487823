"""Switch the model's norm / rotary / activation / MoE-expert layers to the fused Triton kernels (CUDA only).

With ``--quantization fp8`` the norms and the activation that feed an fp8 linear layer also
quantize their output per token (``quant_out``), so that layer skips its own quantization launch.
"""
from __future__ import annotations

from torch import nn

from pagedserve.layers.activation import SiluAndMul
from pagedserve.layers.fused_moe import FusedMoE
from pagedserve.layers.norm import RMSNorm
from pagedserve.layers.rotary import RotaryEmbedding

#: (producer, consumer) attribute paths inside a decoder layer whose producer output feeds only that
#: linear layer (models/llama.py); fused when the consumer's method takes fp8 activations
QUANT_FUSIONS = (("input_layernorm", "self_attn.qkv_proj"), ("post_attention_layernorm", "mlp.gate_up_proj"),
                 ("mlp.act", "mlp.down_proj"))


def install_fused_kernels(model: nn.Module) -> int:
    from pagedserve.kernels.activation import silu_and_mul
    from pagedserve.kernels.fused_moe import fused_experts
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
        elif isinstance(m, FusedMoE):
            m.fused = fused_experts
        else:
            continue
        n += 1
    fuse_fp8_quantization(model)
    return n


def fuse_fp8_quantization(model: nn.Module) -> int:
    """Set ``quant_out`` on every fused producer of :data:`QUANT_FUSIONS` whose consumer holds fp8
    weights; returns how many."""
    n = 0
    for layer in model.modules():
        for producer_path, consumer_path in QUANT_FUSIONS:
            producer, consumer = _get(layer, producer_path), _get(layer, consumer_path)
            method = getattr(consumer, "quant_method", None)
            if (isinstance(producer, (RMSNorm, SiluAndMul)) and producer.fused is not None
                    and method is not None and method.accepts_fp8_act(consumer)
                    and getattr(consumer, "lora", None) is None):  # LoRA's shrink reads the 16-bit input
                producer.quant_out = True
                n += 1
    return n


def _get(module: nn.Module, path: str) -> nn.Module | None:
    for name in path.split("."):
        module = getattr(module, name, None)
        if not isinstance(module, nn.Module):
            return None
    return module
