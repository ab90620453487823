"""Matching our layer names against a checkpoint's per-layer lists (``ignore``, ``ignored_layers``,
``exclude_modules``, ``targets``).

Our fused layers (``qkv_proj``, ``gate_up_proj``) are several checkpoint modules; a fused layer
matches a list when all its shards do, and a list that names only some of them is an error (the
shards would need different methods in one tensor).
"""
from __future__ import annotations

import fnmatch
import re
from typing import Callable, Iterable

#: our fused layer → the checkpoint modules stored in it (models/llama.py ``packed_modules``)
FUSED_SHARDS: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


def checkpoint_names(prefix: str) -> list[str]:
    """``model.layers.0.self_attn.qkv_proj`` → the checkpoint's q/k/v module names; others as is."""
    head, _, last = prefix.rpartition(".")
    if last in FUSED_SHARDS:
        return [f"{head}.{s}" if head else s for s in FUSED_SHARDS[last]]
    return [prefix]


def matches_ct(name: str, pattern: str) -> bool:
    """compressed-tensors / llm-compressor: ``re:<regex>`` (re.match on the module name), else an
    exact module name or a name suffix after a dot."""
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern)


def matches_glob(name: str, pattern: str) -> bool:
    """ModelOpt's ``exclude_modules`` / fp8's ``ignored_layers``: shell-style wildcards, exact names,
    or a name prefix (``model.layers.0`` excludes the layer's linears)."""
    return fnmatch.fnmatchcase(name, pattern) or name == pattern or name.startswith(pattern + ".")


def layer_in(prefix: str, patterns: Iterable[str], match: Callable[[str, str], bool]) -> bool:
    """Does the layer ``prefix`` (all its checkpoint shards) match one of ``patterns``?"""
    patterns = list(patterns)
    names = checkpoint_names(prefix)
    hits = [any(match(n, p) for p in patterns) for n in names]
    if any(hits) and not all(hits):
        raise ValueError(f"quantization_config: {', '.join(n for n, h in zip(names, hits) if h)} matched but "
                         f"{', '.join(n for n, h in zip(names, hits) if not h)} did not; they are fused into "
                         f"{prefix} and must be quantized alike")
    return bool(hits) and all(hits)


#: attention scales of checkpoints calibrated for an fp8 KV cache (compressed-tensors
#: ``kv_cache_scheme``, ModelOpt ``kv_cache_quant_algo``); the loader skips them: the fp8 KV cache
#: (``--kv-cache-dtype fp8``) stores K/V with scale 1
ATTENTION_SCALE_SUFFIXES = (".k_scale", ".v_scale", ".q_scale", ".prob_scale", ".kv_scale")
