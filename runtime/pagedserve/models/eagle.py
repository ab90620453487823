"""EAGLE draft heads over a Llama-family target's hidden states (``speculative_config`` methods
``eagle`` and ``eagle3``), in the published checkpoint layouts.

EAGLE-1 (e.g. ``yuhuili/EAGLE-LLaMA3-Instruct-8B``): ``fc`` maps ``concat(embed(next token), target
hidden)`` (2H → H), then one Llama decoder layer *without* its input norm, and the sum of its MLP output
and residual goes through the target's LM head. The target's embedding is shared (a checkpoint copy
of it is ignored). Tensors: ``fc.weight`` (optional ``fc.bias``), ``layers.0.*``.

EAGLE-3 (e.g. ``yuhuili/EAGLE3-LLaMA3.1-Instruct-8B``): ``fc`` fuses three auxiliary hidden states of
the target (the inputs of layers ``(2, L // 2, L - 3)``, or ``eagle_config.eagle_aux_hidden_state_layer_ids``;
3·H → H); the ``midlayer`` normalises the embedding (``input_layernorm``) and the hidden state
(``hidden_norm``), attends over their concatenation (q/k/v take 2·H inputs), adds the residual and its
MLP; a final ``norm`` and its own ``lm_head`` over a reduced draft vocabulary, whose ids map to the
target's by ``target = draft + d2t[draft]``. Later draft steps feed the head's pre-norm output back in
place of the fused hidden state.

Both return ``(hidden for the LM head, hidden fed to the next draft step)``. The head's one attention
layer has index 0 of the KV cache list it is given (its own layer of the shared KV pool).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from pagedserve.arch_config import ArchConfig
from pagedserve.config import ModelConfig
from pagedserve.layers.linear import QKVParallelLinear, ReplicatedLinear
from pagedserve.layers.norm import RMSNorm
from pagedserve.layers.rotary import RotaryEmbedding
from pagedserve.layers.vocab import ParallelLMHead
from pagedserve.models.llama import LlamaDecoderLayer
from pagedserve.models.loader import _tensors, init_dummy_weights, safetensors_files

logger = logging.getLogger(__name__)

#: target architectures whose hidden states an EAGLE head can read (models/llama.py's LlamaModel)
EAGLE_TARGETS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")

_PACKED = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
           "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}


def eagle3_aux_layers(hf_cfg: dict[str, Any], target_layers: int) -> tuple[int, ...]:
    """The target layers whose inputs EAGLE-3 fuses (vLLM's default: early, middle, late)."""
    ids = (hf_cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if ids is None:
        return (2, target_layers // 2, target_layers - 3)
    return tuple(int(i) for i in ids)


def check_eagle_head(method: str, hf_cfg: dict[str, Any], target: ArchConfig) -> ArchConfig:
    """Validate an EAGLE head's config.json against the target; a ValueError naming the mismatch."""
    pre = f"speculative_config.model ({method} head)"
    if target.architecture not in EAGLE_TARGETS:
        raise ValueError(f"{pre}: EAGLE heads read the hidden states of {', '.join(EAGLE_TARGETS)} targets, "
                         f"not {target.architecture}")
    cfg = dict(hf_cfg)
    cfg.setdefault("architectures", ["LlamaForCausalLM"])
    is3 = any("eagle3" in a.lower() for a in cfg["architectures"])
    if method == "eagle" and is3:
        raise ValueError(f"{pre}: config.json names an EAGLE-3 head ({cfg['architectures'][0]}); use method 'eagle3'")
    try:
        arch = ArchConfig.from_hf(cfg)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{pre}: bad config.json: {e}") from e
    if arch.num_layers != 1:
        raise ValueError(f"{pre}: num_hidden_layers is {arch.num_layers}; only one-layer EAGLE heads are supported")
    th = int(cfg.get("target_hidden_size") or arch.hidden_size) if method == "eagle3" else arch.hidden_size
    for name, got in (("hidden_size", arch.hidden_size), ("target_hidden_size", th)):
        if got != target.hidden_size:
            raise ValueError(f"{pre}: the head's {name} ({got}) differs from the target's hidden size "
                             f"({target.hidden_size}); this head was trained for another model")
    if arch.vocab_size != target.vocab_size:
        raise ValueError(f"{pre}: the head's vocab_size ({arch.vocab_size}) differs from the target's "
                         f"({target.vocab_size})")
    if (arch.num_kv_heads, arch.head_dim) != (target.num_kv_heads, target.head_dim):
        raise ValueError(f"{pre}: the head's KV layout ({arch.num_kv_heads} KV heads x {arch.head_dim}) differs "
                         f"from the target's ({target.num_kv_heads} x {target.head_dim}); not supported")
    if method == "eagle3":
        dv = cfg.get("draft_vocab_size")
        dv = arch.vocab_size if dv is None else dv
        if not isinstance(dv, int) or not 0 < dv <= arch.vocab_size:
            raise ValueError(f"{pre}: draft_vocab_size must be an integer in [1, {arch.vocab_size}], got {dv!r}")
        aux = eagle3_aux_layers(cfg, target.num_layers)
        if len(aux) != 3 or not all(0 <= i < target.num_layers for i in aux):
            raise ValueError(f"{pre}: EAGLE-3 fuses 3 target layers in [0, {target.num_layers}), got {list(aux)} "
                             "(eagle_config.eagle_aux_hidden_state_layer_ids, default (2, L // 2, L - 3))")
    return arch


def _layer(cfg: ArchConfig, max_position: int, qkv_in: int) -> LlamaDecoderLayer:
    rotary = RotaryEmbedding(cfg.head_dim, max_position, cfg.rope_theta, cfg.rope_scaling,
                             cfg.max_position_embeddings, rotary_dim=cfg.rotary_dim)
    layer = LlamaDecoderLayer(cfg, 0, rotary, prefix="layers.0")
    if qkv_in != cfg.hidden_size:  # EAGLE-3: attention over concat(embedding, hidden)
        layer.self_attn.qkv_proj = QKVParallelLinear(qkv_in, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads,
                                                     bias=cfg.qkv_bias, prefix="layers.0.self_attn.qkv_proj")
    return layer


class EagleHead(nn.Module):
    """EAGLE-1: ``fc(concat(embed, hidden))``, one decoder layer without its input norm."""

    is_eagle3 = False

    def __init__(self, cfg: ArchConfig, max_position: int, fc_bias: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.fc = ReplicatedLinear(2 * h, h, bias=fc_bias, prefix="fc")
        self.layers = nn.ModuleList([_layer(cfg, max_position, h)])
        self.layers[0].input_layernorm = None  # EAGLE-1's first layer has none

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layers[0]
        x = self.fc(torch.cat([embeds, hidden], dim=-1))
        a = layer.self_attn(positions, x)
        x, residual = layer.post_attention_layernorm(a, x)
        out = layer.mlp(x) + residual
        return out, out


class Eagle3Head(nn.Module):
    """EAGLE-3: fused auxiliary hidden states, a midlayer over concat(norm(embed), norm(hidden)), its
    own norm and LM head over the draft vocabulary (``d2t`` maps draft ids to target ids)."""

    is_eagle3 = True

    def __init__(self, cfg: ArchConfig, max_position: int, hf_cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.draft_vocab_size = int(hf_cfg.get("draft_vocab_size") or cfg.vocab_size)
        self.norm_before_residual = bool(hf_cfg.get("norm_before_residual", False))
        self.fc = ReplicatedLinear(3 * int(hf_cfg.get("target_hidden_size") or h), h, bias=False, prefix="fc")
        self.layers = nn.ModuleList([_layer(cfg, max_position, 2 * h)])
        self.layers[0].hidden_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.norm = RMSNorm(h, cfg.rms_norm_eps)
        self.lm_head = ParallelLMHead(self.draft_vocab_size, h)
        self.d2t = nn.Parameter(torch.zeros(self.draft_vocab_size, dtype=torch.long), requires_grad=False)

    def combine_hidden_states(self, aux: torch.Tensor) -> torch.Tensor:
        """[T, 3·H] target aux hidden states → [T, H] (the first draft step's hidden input)."""
        return self.fc(aux)

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layers[0]
        if self.norm_before_residual:
            hidden = residual = layer.hidden_norm(hidden)
        else:
            residual, hidden = hidden, layer.hidden_norm(hidden)
        x = torch.cat([layer.input_layernorm(embeds), hidden], dim=-1)
        a = layer.self_attn(positions, x)
        x, residual = layer.post_attention_layernorm(a, residual)
        return self.norm(layer.mlp(x), residual)

    def draft_to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]


def build_eagle_head(method: str, mc: ModelConfig, hf_cfg: dict[str, Any], device: str) -> nn.Module:
    """Build the head of ``method`` (eagle / eagle3) in the target's dtype and load its checkpoint."""
    dummy = mc.load_format == "dummy"  # random weights (benchmarks): config.json alone is enough
    files = [] if dummy else safetensors_files(mc.model)
    names = {n for path in files for n, _ in _tensors(path)}
    prev = torch.get_default_dtype()
    torch.set_default_dtype(mc.dtype)
    max_pos = max(mc.max_model_len, mc.arch.max_position_embeddings)
    try:
        with torch.device(device):
            head: nn.Module = (Eagle3Head(mc.arch, max_pos, hf_cfg) if method == "eagle3"
                               else EagleHead(mc.arch, max_pos, fc_bias=any(_local(n) == "fc.bias" for n in names)))
    finally:
        torch.set_default_dtype(prev)
    if dummy:
        init_dummy_weights(head, mc.seed + 1)
        if isinstance(head, Eagle3Head):  # the draft vocabulary: the first ids of the target's
            head.d2t.data.zero_()
    else:
        _load(head, files, method)
    head.eval()
    logger.info("%s head loaded from %s (%.1fM params)", method, mc.model,
                sum(p.numel() for p in head.parameters()) / 1e6)
    return head


def _local(name: str) -> str:
    """A checkpoint name in the head's own terms: no ``model.`` prefix, ``midlayer`` = layer 0."""
    name = name.removeprefix("model.")
    return "layers.0." + name[len("midlayer."):] if name.startswith("midlayer.") else name


def _load(head: nn.Module, files: list[str], method: str) -> None:
    params = dict(head.named_parameters())
    loaded: set[str] = set()
    for path in files:
        for raw, source in _tensors(path):
            name = _local(raw)
            if name.startswith("embed_tokens.") or name == "t2d" or "rotary_emb" in name or (
                    method == "eagle" and (name.startswith("layers.0.input_layernorm") or name.startswith("norm."))):
                continue  # the target's embedding is shared; EAGLE-1's layer 0 has no input norm
            frag = next((f for f in _PACKED if f".{f}." in name), None)
            shard = None
            if frag is not None:
                fused, shard = _PACKED[frag]
                name = name.replace(f".{frag}.", f".{fused}.")
            param = params.get(name)
            if param is None:
                raise ValueError(f"speculative_config.model ({method} head): checkpoint tensor {raw!r} has no "
                                 "matching parameter (is this an EAGLE head of that method?)")
            loader = getattr(param, "weight_loader", None)
            shape = tuple(source.get_shape() if hasattr(source, "get_shape") else source.shape)
            if shard is None and shape != tuple(param.shape):
                raise ValueError(f"speculative_config.model ({method} head): {raw!r} has shape {shape}, "
                                 f"expected {tuple(param.shape)} (is this an EAGLE head of that method, for this "
                                 "target?)")
            if shard is not None and shape[-1] != param.shape[-1]:
                raise ValueError(f"speculative_config.model ({method} head): {raw!r} takes {shape[-1]} inputs, "
                                 f"expected {param.shape[-1]} (is this an EAGLE head of that method?)")
            if loader is None:
                param.data.copy_(source[:].to(param.dtype))
            elif shard is None:
                loader(param, source)
            else:
                loader(param, source, shard)
            loaded.add(name if shard is None else f"{name}#{shard}")
    missing = []
    for name in params:
        if name == "d2t" and head.draft_vocab_size == head.cfg.vocab_size:
            continue  # no reduced vocabulary: the identity map
        frag = next((fused for fused, _ in _PACKED.values() if f".{fused}." in name), None)
        if frag is None:
            missing += [] if name in loaded else [name]
        else:
            missing += [f"{name}[{s}]" for f, s in _PACKED.values() if f == frag and f"{name}#{s}" not in loaded]
    if missing:
        raise ValueError(f"speculative_config.model ({method} head): checkpoint is missing {len(missing)} "
                         f"weight(s), e.g. {missing[:3]}")
