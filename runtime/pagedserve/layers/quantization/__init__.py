"""Quantization formats: which method a checkpoint needs, and the registry of methods.

``detect_quantization`` reads ``quantization_config`` from ``config.json`` (``quant_method``) and
reconciles it with ``--quantization`` (vLLM's names; the ``*_marlin`` aliases name our fastest path
for the same format). A format we cannot run gets a clear error naming it.
"""
from __future__ import annotations

from typing import Any

from pagedserve.layers.quantization.base import (LinearMethod, QuantizationConfig, UnquantizedLinearMethod,
                                                 get_quant_config, linear_method_for, set_quant_config,
                                                 set_weight_attrs)
from pagedserve.layers.quantization.awq import AWQConfig
from pagedserve.layers.quantization.compressed_tensors import CompressedTensorsConfig
from pagedserve.layers.quantization.fp8_checkpoint import Fp8Config, ModelOptFp8Config
from pagedserve.layers.quantization.gptq import GPTQConfig

#: method name → config class
QUANTIZATION_METHODS: dict[str, type[QuantizationConfig]] = {
    "fp8": Fp8Config,  # a serialized fp8 checkpoint, or online quantization of an unquantized one
    "modelopt": ModelOptFp8Config,
    "gptq": GPTQConfig,
    "awq": AWQConfig,
    "compressed-tensors": CompressedTensorsConfig,
}

#: --quantization names accepted as synonyms of a registered method
ALIASES: dict[str, str] = {
    "gptq_marlin": "gptq", "awq_marlin": "awq",  # vLLM's Marlin kernels; ours is kernels/wna16.py
    "compressed_tensors": "compressed-tensors",
}

#: formats people ask for that this engine does not run, with the reason given to them
UNSUPPORTED: dict[str, str] = {
    "bitsandbytes": "bitsandbytes checkpoints are not supported; use a GPTQ, AWQ or compressed-tensors export",
    "squeezellm": "SqueezeLLM is not supported (vLLM dropped it too); use a GPTQ or AWQ export",
    "gguf": "GGUF files are loaded dequantized to the model dtype (pass the .gguf path as --model)",
    "hqq": "HQQ checkpoints are not supported",
    "eetq": "EETQ checkpoints are not supported",
    "aqlm": "AQLM checkpoints are not supported",
    "exl2": "EXL2 checkpoints are not supported",
    "marlin": "Marlin-format checkpoints (pre-permuted tiles) are not supported; GPTQ and AWQ checkpoints "
              "run with --quantization gptq / awq (gptq_marlin and awq_marlin are accepted as synonyms)",
    "gptq_marlin_24": "2:4 sparse GPTQ (gptq_marlin_24) checkpoints are not supported",
}


def canonical_name(name: str | None) -> str | None:
    """``--quantization`` value → registered method name (None / "none" → None)."""
    if name in (None, "none"):
        return None
    name = ALIASES.get(name, name)
    if name in UNSUPPORTED:
        raise ValueError(f"quantization={name!r}: {UNSUPPORTED[name]}")
    if name not in QUANTIZATION_METHODS:
        raise ValueError(f"quantization must be one of {', '.join(supported_names())}, got {name!r}")
    return name


def supported_names() -> list[str]:
    return sorted([*QUANTIZATION_METHODS, *ALIASES])


def detect_quantization(hf_quant_config: dict[str, Any] | None, requested: str | None) -> str | None:
    """The method to run: the checkpoint's ``quant_method`` (checked against ``--quantization`` when
    both are given), else the requested online method, else None."""
    requested = canonical_name(requested)
    if not hf_quant_config:
        if requested is not None and not QUANTIZATION_METHODS[requested].online:
            raise ValueError(f"quantization={requested!r} needs a checkpoint quantized in that format "
                             "(config.json has no quantization_config)")
        return requested
    found = str(hf_quant_config.get("quant_method", "")).lower().replace("-", "_")
    found = {"compressed_tensors": "compressed-tensors"}.get(found, found)
    if not found:
        raise ValueError("config.json: quantization_config has no 'quant_method'")
    found = canonical_name(found)
    if requested is not None and requested != found:
        raise ValueError(f"quantization={requested!r} does not match the checkpoint, which is quantized "
                         f"with {found!r} (config.json quantization_config.quant_method)")
    return found


def make_quant_config(method: str | None, hf_quant_config: dict[str, Any] | None) -> QuantizationConfig | None:
    if method is None:
        return None
    return QUANTIZATION_METHODS[method].from_config(hf_quant_config or {})


__all__ = ["ALIASES", "LinearMethod", "QUANTIZATION_METHODS", "QuantizationConfig", "UnquantizedLinearMethod",
           "canonical_name", "detect_quantization", "get_quant_config", "linear_method_for",
           "make_quant_config", "set_quant_config", "set_weight_attrs", "supported_names"]
