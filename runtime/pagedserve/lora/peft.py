"""Read a PEFT LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors`` or
``adapter_model.bin``) into per-module ``(A [r, in], B [out, r], scaling)`` on the CPU, checking
everything the engine cannot serve with a ``ValueError`` that says why.

PEFT names a module's weights ``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``
(``<module>`` as in the base checkpoint, e.g. ``model.layers.3.self_attn.q_proj``); the update is
``W + scaling * B @ A`` with ``scaling = lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA
(``use_rslora``); ``rank_pattern`` / ``alpha_pattern`` override ``r`` / ``lora_alpha`` per module.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
_PREFIX = "base_model.model."
_EMBEDDINGS = ("embed_tokens", "wte", "word_embeddings")
_HEADS = ("lm_head",)
_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
                  r"(?:\.[A-Za-z0-9_\-]+)?(?:\.weight)?$")


@dataclass
class LoRAModuleWeights:
    lora_a: torch.Tensor  # [r, in]
    lora_b: torch.Tensor  # [out, r]
    scaling: float

    @property
    def rank(self) -> int:
        return self.lora_a.shape[0]


@dataclass
class PEFTAdapter:
    path: str
    rank: int  # the largest rank of any module
    modules: dict[str, LoRAModuleWeights] = field(default_factory=dict)  # checkpoint module name → weights
    config: dict[str, Any] = field(default_factory=dict)


def read_adapter_config(path: str) -> dict[str, Any]:
    if not os.path.isdir(path):
        raise ValueError(f"lora_path {path!r}: no such adapter directory")
    cfg_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        raise ValueError(f"lora_path {path!r}: {CONFIG_NAME} not found (a PEFT LoRA adapter directory is expected)")
    try:
        with open(cfg_path) as fh:
            cfg = json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"lora_path {path!r}: {CONFIG_NAME} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"lora_path {path!r}: {CONFIG_NAME} must hold a JSON object")
    return cfg


def check_adapter_config(cfg: dict[str, Any], path: str, max_lora_rank: int) -> None:
    """Reject what the engine cannot serve (names the config field)."""
    where = f"lora_path {path!r}: {CONFIG_NAME}"
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ValueError(f"{where}: peft_type {peft_type!r} is not supported (only LORA)")
    if cfg.get("use_dora"):
        raise ValueError(f"{where}: use_dora is true; DoRA adapters are not supported (merge them into the "
                         "base weights, or train a plain LoRA)")
    if cfg.get("bias", "none") not in ("none", None):
        raise ValueError(f"{where}: bias={cfg.get('bias')!r} is not supported (only 'none')")
    if cfg.get("fan_in_fan_out"):
        raise ValueError(f"{where}: fan_in_fan_out is true (GPT-2 Conv1D layers), which is not supported")
    if cfg.get("modules_to_save"):
        raise ValueError(f"{where}: modules_to_save={cfg['modules_to_save']!r} is not supported (fully trained "
                         "modules; embedding / lm_head targets included)")
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"{where}: r must be a positive integer, got {r!r}")
    ranks = [r] + [v for v in (cfg.get("rank_pattern") or {}).values()]
    if max(ranks) > max_lora_rank:
        raise ValueError(f"{where}: rank {max(ranks)} is larger than max_lora_rank={max_lora_rank} "
                         "(raise --max-lora-rank)")
    alpha = cfg.get("lora_alpha", r)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise ValueError(f"{where}: lora_alpha must be a number, got {alpha!r}")


def _pattern_value(patterns: dict[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern: a key matches a module whose name ends with it (regex)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def _load_tensors(path: str) -> dict[str, torch.Tensor]:
    for name in WEIGHT_NAMES:
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(f, device="cpu")
        state = torch.load(f, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"lora_path {path!r}: {name} does not hold a state dict")
        return state
    raise ValueError(f"lora_path {path!r}: no adapter weights ({' or '.join(WEIGHT_NAMES)})")


def load_peft_adapter(path: str, max_lora_rank: int, supported: Iterable[str], num_layers: int) -> PEFTAdapter:
    """Read and check the adapter at ``path``. ``supported``: the module names (last component,
    e.g. ``q_proj``) the model can apply LoRA to; ``num_layers``: the model's decoder layers."""
    cfg = read_adapter_config(path)
    check_adapter_config(cfg, path, max_lora_rank)
    supported = set(supported)
    tensors = _load_tensors(path)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None and any(f".{n}." in f".{key}." for n in _EMBEDDINGS):
            raise ValueError(f"lora_path {path!r}: LoRA on the embedding ({key}) is not supported")
        if m is None and any(f".{n}." in f".{key}." for n in _HEADS):
            raise ValueError(f"lora_path {path!r}: LoRA on the LM head ({key}) is not supported")
        if m is None:
            raise ValueError(f"lora_path {path!r}: unexpected tensor {key!r} (not a LoRA A/B weight)")
        module, kind = m.group("module").removeprefix(_PREFIX), m.group("kind")
        short = module.rsplit(".", 1)[-1]
        if kind.startswith("lora_embedding") or short in _EMBEDDINGS:
            raise ValueError(f"lora_path {path!r}: LoRA on the embedding ({module}) is not supported")
        if short in _HEADS:
            raise ValueError(f"lora_path {path!r}: LoRA on the LM head ({module}) is not supported")
        if kind == "lora_magnitude_vector":
            raise ValueError(f"lora_path {path!r}: DoRA weights ({key}) are not supported")
        if short not in supported:
            raise ValueError(f"lora_path {path!r}: target module {short!r} ({module}) is not in this model's "
                             f"LoRA targets ({', '.join(sorted(supported))})")
        layer = re.search(r"\.layers\.(\d+)\.", f".{module}.")
        if layer is None or int(layer.group(1)) >= num_layers:
            raise ValueError(f"lora_path {path!r}: module {module!r} is not a layer of this model "
                             f"({num_layers} decoder layers)")
        pairs.setdefault(module, {})[kind] = t
    if not pairs:
        raise ValueError(f"lora_path {path!r}: the adapter holds no LoRA weights")
    r0, alpha0 = cfg["r"], cfg.get("lora_alpha", cfg["r"])
    rslora = bool(cfg.get("use_rslora"))
    out = PEFTAdapter(path, 0, config=cfg)
    for module, ab in pairs.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise ValueError(f"lora_path {path!r}: module {module!r} lacks lora_A or lora_B")
        a, b = ab["lora_A"], ab["lora_B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"lora_path {path!r}: module {module!r}: lora_A {tuple(a.shape)} and lora_B "
                             f"{tuple(b.shape)} are not [r, in] and [out, r]")
        r = a.shape[0]
        if r > max_lora_rank:
            raise ValueError(f"lora_path {path!r}: module {module!r} has rank {r}, larger than "
                             f"max_lora_rank={max_lora_rank} (raise --max-lora-rank)")
        alpha = _pattern_value(cfg.get("alpha_pattern"), module, alpha0)
        r_cfg = _pattern_value(cfg.get("rank_pattern"), module, r0)
        if r_cfg != r:
            raise ValueError(f"lora_path {path!r}: module {module!r} has rank {r} but the config says {r_cfg}")
        scaling = alpha / math.sqrt(r) if rslora else alpha / r
        out.modules[module] = LoRAModuleWeights(a.float(), b.float(), float(scaling))
        out.rank = max(out.rank, r)
    return out
