"""The model facts the engine needs, read from an HF ``config.json`` (dict), independent of
the transformers version that wrote it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ArchConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    qk_norm: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    hidden_act: str = "silu"
    moe: "MoEConfig | None" = None  # Mixture-of-Experts layers (None: a dense model)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "ArchConfig":
        archs = cfg.get("architectures") or []
        if not archs:
            raise ValueError("config.json: missing 'architectures'")
        num_heads = _req(cfg, "num_attention_heads")
        hidden = _req(cfg, "hidden_size")
        rp = cfg.get("rope_parameters") or {}
        rope_theta = cfg.get("rope_theta", rp.get("rope_theta", 10000.0))
        scaling = cfg.get("rope_scaling") or None
        if scaling is None and rp.get("rope_type", "default") not in ("default", None):
            scaling = dict(rp)
        if scaling is not None:
            scaling = dict(scaling)
            scaling.setdefault("rope_type", scaling.get("type", "default"))
            if scaling["rope_type"] == "default":
                scaling = None
        eos = cfg.get("eos_token_id")
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        arch = archs[0]
        sliding = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
        if arch.startswith("Qwen2") and not cfg.get("use_sliding_window", False):
            sliding = None
        act = cfg.get("hidden_act", cfg.get("hidden_activation", "silu"))
        return cls(
            architecture=arch,
            vocab_size=_req(cfg, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_req(cfg, "intermediate_size"),
            num_layers=_req(cfg, "num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
            head_dim=cfg.get("head_dim") or hidden // num_heads,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=scaling,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", False)) or (arch.startswith("Qwen2") and cfg.get("qkv_bias", True)),
            qk_norm=arch.startswith("Qwen3"),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            sliding_window=sliding,
            eos_token_ids=eos_ids,
            bos_token_id=cfg.get("bos_token_id"),
            hidden_act=act,
            moe=MoEConfig.from_hf(cfg),
        )

    def kv_bytes_per_token(self, dtype_size: int) -> int:
        """Bytes of KV cache one token needs across all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_size


@dataclass
class MoEConfig:
    """The sparse-MLP facts of a Mixture-of-Experts model (Mixtral, Qwen2-MoE, Qwen3-MoE).

    Layer ``i`` is sparse unless ``i in mlp_only_layers`` or ``(i + 1) % decoder_sparse_step``;
    a dense layer uses the model's ``intermediate_size``, an expert ``moe_intermediate_size``."""
    num_experts: int
    top_k: int
    moe_intermediate_size: int
    norm_topk_prob: bool
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE: one shared expert with a sigmoid gate
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "MoEConfig | None":
        num = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
        if not num:
            return None
        mixtral = cfg.get("model_type") == "mixtral" or "Mixtral" in (cfg.get("architectures") or [""])[0]
        top_k = int(cfg.get("num_experts_per_tok") or 0)
        if not 0 < top_k <= num:
            raise ValueError(f"config.json: num_experts_per_tok must be in [1, {num}], got {top_k}")
        step = int(cfg.get("decoder_sparse_step") or 1)
        if step < 1:
            raise ValueError(f"config.json: decoder_sparse_step must be >= 1, got {step}")
        return cls(num_experts=int(num), top_k=top_k,
                   moe_intermediate_size=int(cfg.get("moe_intermediate_size") or _req(cfg, "intermediate_size")),
                   norm_topk_prob=True if mixtral else bool(cfg.get("norm_topk_prob", False)),
                   shared_expert_intermediate_size=int(cfg.get("shared_expert_intermediate_size") or 0),
                   decoder_sparse_step=step, mlp_only_layers=[int(i) for i in cfg.get("mlp_only_layers") or []])

    def is_sparse(self, layer_idx: int) -> bool:
        return layer_idx not in self.mlp_only_layers and (layer_idx + 1) % self.decoder_sparse_step == 0


def _req(cfg: dict[str, Any], key: str) -> Any:
    if key not in cfg:
        raise ValueError(f"config.json: missing required field '{key}'")
    return cfg[key]
