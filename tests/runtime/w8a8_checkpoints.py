"""Small 8-bit checkpoints written at test time from a float HF model directory, and the float model
holding their dequantised weights (the reference).

- compressed-tensors W8A8 (``FP8``: per-tensor weights, static per-tensor activations;
  ``FP8_DYNAMIC``: per-channel weights, dynamic per-token activations; ``W8A8``: int8 per-channel
  weights, dynamic per-token int8 activations; or any scheme dict) — written by the
  ``compressed-tensors`` package itself (apply the scheme, set the scales we calibrate, compress,
  save, ``update_config``);
- serialized fp8 in the vLLM / AutoFP8 layout (``quant_method: fp8``) and NVIDIA ModelOpt's
  (``quant_method: modelopt``, ``quant_algo: FP8``, with KV-cache scales): e4m3 weights with scalar
  ``weight_scale`` and ``input_scale`` tensors, written by hand (neither writer is on PyPI as a
  light package); the scales are computed as those tools document (absmax / 448).

Static input scales are calibrated on a few prompts (absmax of each linear layer's input / 448 or
/ 127).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FP8_MAX, INT8_MAX = 448.0, 127.0
CALIBRATION = [[5 + (i * 7) % 200 for i in range(n)] for n in (9, 30, 17)]


def _copy_side_files(src: str, dst: str) -> None:
    """Tokenizer and generation config: every file but the weights and config.json."""
    for f in os.listdir(src):
        path = os.path.join(src, f)
        if os.path.isfile(path) and not f.endswith(".safetensors") and f != "config.json":
            shutil.copy(path, dst)


def _load_hf(src: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()


def calibrate_input_amax(model) -> dict[str, float]:
    """Each ``nn.Linear``'s input absmax over the calibration prompts."""
    amax: dict[str, float] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name != "lm_head":
            def hook(mod, args, name=name):
                amax[name] = max(amax.get(name, 0.0), float(args[0].abs().max()))
            hooks.append(m.register_forward_pre_hook(hook))
    with torch.no_grad():
        for ids in CALIBRATION:
            model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return amax


def write_compressed_tensors(src: str, dst: str, scheme: str | dict[str, Any]) -> str:
    """``src`` (float HF dir) quantized with a compressed-tensors preset name or scheme dict."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationConfig, QuantizationScheme, apply_quantization_config,
                                                 preset_name_to_scheme)

    model = _load_hf(src)
    amax = calibrate_input_amax(model)
    if isinstance(scheme, str):
        qscheme = preset_name_to_scheme(scheme, ["Linear"])
    else:
        qscheme = QuantizationScheme(targets=["Linear"], **scheme)
    qc = QuantizationConfig(config_groups={"group_0": qscheme}, ignore=["lm_head"])
    apply_quantization_config(model, qc)
    with torch.no_grad():
        for name, m in model.named_modules():
            if not hasattr(m, "weight_scale"):
                continue
            w, args = m.weight, m.quantization_scheme.weights
            qmax = FP8_MAX if args.type == "float" else INT8_MAX
            wamax = w.abs().amax() if args.strategy == "tensor" else w.abs().amax(dim=1, keepdim=True)
            m.weight_scale.copy_((wamax / qmax).reshape(m.weight_scale.shape))
            if hasattr(m, "input_scale"):
                m.input_scale.fill_(amax[name] / qmax)
    mc = ModelCompressor.from_pretrained_model(model)
    mc.compress_model(model)
    model.save_pretrained(dst)
    mc.update_config(dst)
    _copy_side_files(src, dst)
    return dst


def _fp8_per_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().amax().float() / FP8_MAX
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def write_fp8_checkpoint(src: str, dst: str, flavour: str, activation_scheme: str = "static",
                         ignore: tuple[str, ...] = ("lm_head",)) -> str:
    """vLLM's ``fp8`` layout (``flavour="fp8"``) or ModelOpt's (``"modelopt"``): per-tensor e4m3
    weights, 0-dim ``weight_scale`` / ``input_scale``; ModelOpt's also carries KV-cache scales."""
    model = _load_hf(src)
    amax = calibrate_input_amax(model)
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        mod = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and mod in amax and not any(mod == i or mod.startswith(i) for i in ignore):
            q, s = _fp8_per_tensor(t)
            out[name], out[f"{mod}.weight_scale"] = q, s.reshape(())
            if activation_scheme == "static":
                out[f"{mod}.input_scale"] = torch.tensor(amax[mod] / FP8_MAX)
            if flavour == "modelopt" and mod.endswith(("k_proj", "v_proj")):
                out[f"{mod}.{mod[-6]}_scale"] = torch.tensor(1.0)  # k_proj.k_scale / v_proj.v_scale
        elif not (name == "lm_head.weight" and model.config.tie_word_embeddings):
            out[name] = t.contiguous()
    os.makedirs(dst, exist_ok=True)
    save_file(out, os.path.join(dst, "model.safetensors"))
    cfg = json.load(open(os.path.join(src, "config.json")))
    if flavour == "fp8":
        cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": activation_scheme,
                                      "ignored_layers": list(ignore)}
    else:
        cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8",
                                      "exclude_modules": [f"{i}*" for i in ignore],
                                      "producer": {"name": "modelopt", "version": "0.0-test"}}
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=1)
    _copy_side_files(src, dst)
    return dst


def write_dequantized(quant_dir: str, dst: str) -> str:
    """The float32 model holding ``quant_dir``'s dequantised weights (``q * weight_scale``)."""
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(os.path.join(quant_dir, "model.safetensors"), "pt") as f:
        names = list(f.keys())
        for name in names:
            if name.endswith(("_scale", "_zero_point")):
                continue
            t = f.get_tensor(name)
            scale_name = name[:-len("weight")] + "weight_scale"
            if name.endswith(".weight") and scale_name in names:
                s = f.get_tensor(scale_name).float()
                t = t.float() * (s.reshape(-1, 1) if s.numel() > 1 else s.reshape(()))
            tensors[name] = t.float().contiguous()
    os.makedirs(dst, exist_ok=True)
    save_file(tensors, os.path.join(dst, "model.safetensors"))
    cfg = json.load(open(os.path.join(quant_dir, "config.json")))
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=1)
    _copy_side_files(quant_dir, dst)
    return dst
