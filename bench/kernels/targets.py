"""Every runtime symbol the kernel benchmarks measure, imported in this one place: the Triton kernels
and their torch references. When a runtime module moves, only this file changes."""
from __future__ import annotations

from bench.kernels import harness  # noqa: F401  (puts runtime/ on sys.path)
from pagedserve.attention.metadata import AttentionMetadata
from pagedserve.attention.triton_backend import TritonAttentionBackend
from pagedserve.kernels.activation import silu_and_mul
from pagedserve.kernels.decode_attention import decode_flops_bytes, decode_num_splits, paged_decode_attention
from pagedserve.kernels.gemv import gemv
from pagedserve.kernels.kv_store import store_kv_ref
from pagedserve.kernels.kv_store_triton import store_kv
from pagedserve.kernels.paged_attention_ref import paged_attention_ref
from pagedserve.kernels.prefill_attention import paged_prefill_attention, prefill_flops
from pagedserve.kernels.quant_fp8 import quantize_per_token
from pagedserve.kernels.rmsnorm import rms_norm_fused
from pagedserve.kernels.rotary import rotary_fused
from pagedserve.layers.activation import silu_and_mul_ref
from pagedserve.kernels.fp8_utils import quantize_per_token_ref
from pagedserve.layers.norm import rms_norm_ref
from pagedserve.layers.rotary import RotaryEmbedding, apply_rotary_ref

__all__ = ["AttentionMetadata", "RotaryEmbedding", "TritonAttentionBackend", "apply_rotary_ref", "decode_flops_bytes",
           "decode_num_splits", "gemv", "paged_attention_ref", "paged_decode_attention", "paged_prefill_attention",
           "prefill_flops", "quantize_per_token", "quantize_per_token_ref", "rms_norm_fused", "rms_norm_ref",
           "rotary_fused", "silu_and_mul", "silu_and_mul_ref", "store_kv", "store_kv_ref"]
