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
    #: the fraction of each head's dims that RoPE rotates (Phi-4-mini: 0.75; the first ones)
    partial_rotary_factor: float = 1.0
    #: per layer "full_attention" / "sliding_attention" (transformers 5 writes it); None: all alike
    layer_types: list[str] | None = None
    #: the whole config.json, for the fields only one model family reads (models/<family>.py)
    hf_config: dict[str, Any] = field(default_factory=dict, repr=False)
    moe: "MoEConfig | None" = None  # Mixture-of-Experts layers (None: a dense model)
    #: a vision-language model's language model architecture (LLaVA: LlamaForCausalLM); None otherwise
    text_architecture: str | None = None

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "ArchConfig":
        archs = cfg.get("architectures") or []
        if not archs:
            raise ValueError("config.json: missing 'architectures'")
        if isinstance(cfg.get("vision_config"), dict) and isinstance(cfg.get("text_config"), dict):
            return cls._vision_language(cfg, archs[0])
        num_heads = _req(cfg, "num_attention_heads")
        hidden = _req(cfg, "hidden_size")
        rope_theta, scaling = rope_config(cfg, "full_attention")
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
            layer_types=_layer_types(cfg, arch),
            partial_rotary_factor=_partial_rotary_factor(cfg),
            hf_config=dict(cfg),
            moe=MoEConfig.from_hf(cfg),
        )

    @classmethod
    def _vision_language(cls, cfg: dict[str, Any], arch: str) -> "ArchConfig":
        """A vision-language model (LLaVA): the language model's facts come from ``text_config``; the
        whole config (vision tower, projector, image token) stays in ``hf_config``."""
        text = dict(cfg["text_config"])
        model_type = text.get("model_type", "llama")
        if model_type not in _TEXT_ARCHS:
            raise ValueError(f"config.json: text_config.model_type {model_type!r} is not supported for {arch} "
                             f"(supported: {', '.join(sorted(_TEXT_ARCHS))})")
        text["architectures"] = [_TEXT_ARCHS[model_type]]
        for key in ("eos_token_id", "bos_token_id", "tie_word_embeddings"):
            if text.get(key) is None and cfg.get(key) is not None:
                text[key] = cfg[key]
        out = cls.from_hf(text)
        out.text_architecture = out.architecture
        out.architecture = arch
        out.hf_config = dict(cfg)
        return out

    @property
    def is_multimodal(self) -> bool:
        """A vision-language model: prompts may carry images (``multi_modal_data``)."""
        return isinstance(self.hf_config.get("vision_config"), dict)

    @property
    def image_token_id(self) -> int | None:
        """The placeholder token id that image features replace (LLaVA's ``image_token_index``)."""
        c = self.hf_config
        tid = c.get("image_token_id", c.get("image_token_index"))
        return int(tid) if tid is not None else None

    @property
    def rotary_dim(self) -> int:
        """The head dims RoPE rotates (the first ones; HF's ``int(head_dim * partial_rotary_factor)``)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def all_layers_window(self) -> int | None:
        """The window when every layer is windowed (then no token left of it is ever read again)."""
        wins = {self.layer_sliding_window(i) for i in range(self.num_layers)}
        return wins.pop() if len(wins) == 1 and None not in wins else None

    def layer_sliding_window(self, layer_idx: int) -> int | None:
        """The attention window of a layer (None: full attention)."""
        if not self.sliding_window:
            return None
        if self.layer_types is None:
            return self.sliding_window
        return self.sliding_window if self.layer_types[layer_idx] == "sliding_attention" else None

    def kv_bytes_per_token(self, dtype_size: int) -> int:
        """Bytes of KV cache one token needs across all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_size


#: text_config.model_type of a vision-language model → the decoder architecture that runs it
_TEXT_ARCHS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def rope_config(cfg: dict[str, Any], layer_type: str = "full_attention") -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling or None) of config.json, for one layer type when ``rope_parameters`` is
    keyed by layer type (transformers 5's Gemma 3). Reads transformers 5's ``rope_parameters`` and
    the older ``rope_theta`` / ``rope_scaling``; ``original_max_position_embeddings`` at the top
    level (Phi-3) is copied into the scaling."""
    rp = cfg.get("rope_parameters") or {}
    if isinstance(rp.get(layer_type), dict):
        rp = rp[layer_type]
    elif any(isinstance(v, dict) for v in rp.values()):
        raise ValueError(f"config.json: rope_parameters has no entry for layer type {layer_type!r}")
    theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
    scaling = None if rp.get("rope_type", "default") in ("default", None) else dict(rp)
    if scaling is None and isinstance(cfg.get("rope_scaling"), dict):
        scaling = dict(cfg["rope_scaling"])
    if scaling is not None:
        scaling.setdefault("rope_type", scaling.get("type", "default"))
        if scaling["rope_type"] == "default":
            return float(theta), None
        if scaling.get("original_max_position_embeddings") is None and cfg.get("original_max_position_embeddings"):
            scaling["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
    return float(theta), scaling


def _partial_rotary_factor(cfg: dict[str, Any]) -> float:
    rp = cfg.get("rope_parameters") or {}
    if isinstance(rp.get("full_attention"), dict):
        rp = rp["full_attention"]
    f = float(rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) or 1.0)
    if not 0.0 < f <= 1.0:
        raise ValueError(f"config.json: partial_rotary_factor must be in (0, 1], got {f}")
    return f


def _layer_types(cfg: dict[str, Any], arch: str) -> list[str] | None:
    if cfg.get("layer_types"):
        return list(cfg["layer_types"])
    if arch.startswith("Qwen2") and cfg.get("use_sliding_window") and "max_window_layers" in cfg:
        # configs from before transformers 5: layers from max_window_layers on are windowed
        n, first = int(cfg["num_hidden_layers"]), int(cfg["max_window_layers"])
        return ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
    return None
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
