"""Rotary position embedding (neox / rotate-half style, as HF Llama). cos/sin are precomputed once
for every position ``[0, max_position)``, so the torch path and the fused kernel share them.

Frequency scalings (``rope_type`` of HF's ``rope_parameters`` / ``rope_scaling``), each equal to
transformers' rope init function:

- ``linear``: positions divided by ``factor``.
- ``llama3``: Llama 3.1's wavelength-dependent division by ``factor`` with a smooth ramp.
- ``yarn``: interpolation for low frequencies, extrapolation for high ones, a linear ramp between
  (``beta_fast`` / ``beta_slow``), and cos/sin scaled by ``attention_factor``.
- ``dynamic`` (NTK): the base grows with the sequence length ``L`` once ``L`` passes
  ``max_position_embeddings``. HF recomputes it per forward pass from the batch's longest
  sequence; a paged cache cannot re-rotate cached keys, so here ``L`` is fixed at the cache length
  (``max_position``): equal to HF while ``max_model_len <= max_position_embeddings`` (then it is the
  plain RoPE), and HF's frequencies at ``L = max_model_len`` beyond.
- ``longrope`` (Phi-3): per-frequency ``short_factor`` / ``long_factor`` and cos/sin scaled by
  ``attention_factor``. Positions below ``original_max_position_embeddings`` use the short factors,
  positions from it on the long ones - a function of the position alone, so prefix caching,
  batching and chunking never change a result. Equal to HF for every sequence that stays within
  the original length; past it HF re-encodes the *whole* sequence with the long factors (its
  Phi-3 drops the KV cache at the switch), which a paged cache does not do (nor does vLLM).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "dynamic", "longrope")


def _field(s: dict[str, Any], key: str, rope_type: str) -> Any:
    if s.get(key) is None:
        raise ValueError(f"rope_parameters: rope_type {rope_type!r} needs the field {key!r}")
    return s[key]


def _default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None,
                  max_position_embeddings: int | None = None, seq_len: int | None = None) -> torch.Tensor:
    """The inverse frequencies [head_dim / 2] (for ``longrope``: of a sequence of ``seq_len``)."""
    return rope_parameters(head_dim, theta, scaling, max_position_embeddings, seq_len)[0]


def rope_parameters(head_dim: int, theta: float, scaling: dict[str, Any] | None,
                    max_position_embeddings: int | None = None, seq_len: int | None = None
                    ) -> tuple[torch.Tensor, float]:
    """(inverse frequencies, attention factor that multiplies cos and sin)."""
    rope_type = (scaling or {}).get("rope_type", "default")
    if rope_type == "default":
        return _default_inv_freq(head_dim, theta), 1.0
    assert scaling is not None
    if rope_type == "linear":
        return _default_inv_freq(head_dim, theta) / float(_field(scaling, "factor", rope_type)), 1.0
    if rope_type == "llama3":
        return _llama3_inv_freq(_default_inv_freq(head_dim, theta), scaling), 1.0
    if rope_type == "yarn":
        return _yarn(head_dim, theta, scaling, max_position_embeddings)
    if rope_type == "dynamic":
        return _dynamic_ntk(head_dim, theta, scaling, max_position_embeddings, seq_len), 1.0
    if rope_type == "longrope":
        return _longrope(head_dim, theta, scaling, max_position_embeddings, seq_len)
    raise ValueError(f"rope_type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: long wavelengths divided by ``factor``, short ones kept, a smooth ramp between."""
    factor = float(_field(s, "factor", "llama3"))
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_len = float(s.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(dim: int, base: float, s: dict[str, Any], max_pos: int | None) -> tuple[torch.Tensor, float]:
    orig = int(_field(s, "original_max_position_embeddings", "yarn"))
    factor = s.get("factor")
    if factor is None:
        if max_pos is None:
            raise ValueError("rope_parameters: yarn without 'factor' needs max_position_embeddings")
        factor = max_pos / orig
    factor = float(factor)
    attn = s.get("attention_factor")
    if attn is None:
        mscale, mscale_all = s.get("mscale"), s.get("mscale_all_dim")
        attn = (_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all) if mscale and mscale_all
                else _yarn_mscale(factor))
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times in `orig`
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # 1: high frequency, extrapolated as is
    return interpolation * (1 - keep) + extrapolation * keep, float(attn)


def _dynamic_ntk(dim: int, base: float, s: dict[str, Any], max_pos: int | None, seq_len: int | None
                 ) -> torch.Tensor:
    factor = float(_field(s, "factor", "dynamic"))
    if max_pos is None:
        raise ValueError("rope_parameters: dynamic scaling needs max_position_embeddings")
    length = max(seq_len or max_pos, max_pos)
    base = base * ((factor * length / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _longrope(dim: int, base: float, s: dict[str, Any], max_pos: int | None, seq_len: int | None
              ) -> tuple[torch.Tensor, float]:
    orig = int(_field(s, "original_max_position_embeddings", "longrope"))
    factors = {k: _field(s, k, "longrope") for k in ("short_factor", "long_factor")}
    for k, f in factors.items():
        if len(f) != dim // 2:
            raise ValueError(f"rope_parameters: longrope {k} has {len(f)} entries, head_dim / 2 is {dim // 2}")
    factor = s.get("factor")
    if factor is None:
        factor = (max_pos or orig) / orig
    attn = s.get("attention_factor")
    if attn is None:
        attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    ext = torch.tensor(factors["long_factor" if seq_len and seq_len > orig else "short_factor"],
                       dtype=torch.float32)
    shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (ext * base ** shape), float(attn)


def rope_cos_sin(head_dim: int, max_position: int, theta: float, scaling: dict[str, Any] | None = None,
                 max_position_embeddings: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [max_position, head_dim / 2] (float32), attention factor included."""
    pos = torch.arange(max_position, dtype=torch.float32)
    rope_type = (scaling or {}).get("rope_type", "default")
    if rope_type == "longrope":
        assert scaling is not None
        orig = int(_field(scaling, "original_max_position_embeddings", "longrope"))
        short, attn = rope_parameters(head_dim, theta, scaling, max_position_embeddings, seq_len=orig)
        long, _ = rope_parameters(head_dim, theta, scaling, max_position_embeddings, seq_len=orig + 1)
        inv = torch.where((pos < orig)[:, None], short[None, :], long[None, :])
        freqs = pos[:, None] * inv
    else:
        inv_freq, attn = rope_parameters(head_dim, theta, scaling, max_position_embeddings, seq_len=max_position)
        freqs = pos[:, None] * inv_freq[None, :]
    return freqs.cos() * attn, freqs.sin() * attn


def apply_rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [tokens, heads, head_dim]; cos/sin: [tokens, head_dim // 2] (float32)."""
    half = x.shape[-1] // 2
    cos = torch.cat((cos, cos), dim=-1).unsqueeze(1).to(x.dtype)
    sin = torch.cat((sin, sin), dim=-1).unsqueeze(1).to(x.dtype)
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class RotaryEmbedding(nn.Module):
    """``rotary_dim`` < ``head_dim``: partial RoPE (Phi-4-mini), only the first ``rotary_dim`` dims of
    each head rotate (rotate-half within them), the rest pass through."""

    def __init__(self, head_dim: int, max_position: int, theta: float,
                 scaling: dict[str, Any] | None = None, max_position_embeddings: int | None = None,
                 rotary_dim: int | None = None) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim or head_dim
        if self.rotary_dim % 2 or self.rotary_dim > head_dim:
            raise ValueError(f"rotary dims {self.rotary_dim} must be even and at most head_dim {head_dim}")
        cos, sin = rope_cos_sin(self.rotary_dim, max_position, theta, scaling, max_position_embeddings)
        self.register_buffer("cos_cache", cos, persistent=False)
        self.register_buffer("sin_cache", sin, persistent=False)
        self.fused = None  # a fused kernel (positions, q, k, cos_cache, sin_cache) on GPU

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        rd = self.rotary_dim
        if self.fused is not None:
            if rd == self.head_dim:
                return self.fused(positions, q, k, self.cos_cache, self.sin_cache)
            self.fused(positions, q[..., :rd], k[..., :rd], self.cos_cache, self.sin_cache)  # in place
            return q, k
        cos, sin = self.cos_cache[positions], self.sin_cache[positions]
        if rd == self.head_dim:
            return apply_rotary_ref(q, cos, sin), apply_rotary_ref(k, cos, sin)
        return (torch.cat((apply_rotary_ref(q[..., :rd], cos, sin), q[..., rd:]), dim=-1),
                torch.cat((apply_rotary_ref(k[..., :rd], cos, sin), k[..., rd:]), dim=-1))
