"""Build a model and load its weights: safetensors (single or sharded with an index), PyTorch
``pytorch_model*.bin`` files when a directory has no safetensors (``torch.load(weights_only=True)``), or
random "dummy" weights of the right shapes for benchmarks (like vLLM's ``--load-format dummy``).

Each parameter's ``weight_loader`` reads only its own slice of a lazy safetensors tensor, so a
tensor-parallel rank never materialises the other ranks' shards.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import time
import zlib

import torch
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from pagedserve.config import ModelConfig
from pagedserve.layers.linear import process_weights_after_loading
from pagedserve.layers.quantization import make_quant_config, set_quant_config
from pagedserve.models.registry import check_architecture

logger = logging.getLogger(__name__)


def build_model(mc: ModelConfig, device: str, use_tqdm: bool = True) -> nn.Module:
    cls = check_architecture(mc.arch.architecture)
    t0 = time.perf_counter()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(mc.dtype)
    quant = make_quant_config(mc.quantization, mc.quant_config)
    try:
        with torch.device(device), set_quant_config(quant):
            model = cls(mc.arch, max_position=max(mc.max_model_len, mc.arch.max_position_embeddings))
    finally:
        torch.set_default_dtype(prev)
    if mc.load_format == "dummy":
        init_dummy_weights(model, mc.seed)
    else:
        load_safetensors(model, mc.model, use_tqdm=use_tqdm)
    process_weights_after_loading(model)
    model.eval()
    logger.info("model %s loaded in %.2f s (%s%s, %.1fM params)", mc.arch.architecture,
                time.perf_counter() - t0, mc.dtype, f", {quant.describe()}" if quant else "",
                sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def safetensors_files(model_dir: str) -> list[str]:
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as fh:
            weight_map = json.load(fh).get("weight_map", {})
        files = sorted({os.path.join(model_dir, f) for f in weight_map.values()})
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"model: shard(s) listed in the index are missing: "
                                    f"{', '.join(os.path.basename(m) for m in missing)}")
        return files
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        files = sorted(glob.glob(os.path.join(model_dir, "pytorch_model*.bin")))
    if not files:
        raise FileNotFoundError(f"model: no *.safetensors (or pytorch_model*.bin) weights in {model_dir} "
                                "(use load_format='dummy' for random weights)")
    return files


def _tensors(path: str):
    """(name, lazily sliceable tensor) of one weights file."""
    if path.endswith(".bin"):
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        yield from state.items()
        return
    with safe_open(path, framework="pt", device="cpu") as f:
        for name in f.keys():
            yield name, f.get_slice(name)


def _target(name: str, packed: dict[str, tuple[str, object]]) -> tuple[str, object]:
    for frag, (fused, shard) in packed.items():
        if f".{frag}." in name:
            return name.replace(f".{frag}.", f".{fused}."), shard
    return name, None


def _layer_index(name: str) -> int:
    """``i`` of a ``model.layers.{i}.`` tensor name, else -1."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else -1


_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")


def load_safetensors(model: nn.Module, model_dir: str, use_tqdm: bool = True) -> None:
    params = dict(model.named_parameters())
    packed = getattr(model, "packed_modules", {})
    tied = getattr(getattr(model, "cfg", None), "tie_word_embeddings", False)
    loaded: set[str] = set()
    num_layers = getattr(getattr(model, "cfg", None), "num_layers", None)
    files = safetensors_files(model_dir)
    bar = tqdm(files, desc="Loading weights", unit="file", disable=not use_tqdm or len(files) < 2)
    for path in bar:
        for name, source in _tensors(path):
            if "rotary_emb.inv_freq" in name or (tied and name == "lm_head.weight"):
                continue
            target, shard = _target(name, packed)
            param = params.get(target)
            if param is None and num_layers is not None and _layer_index(name) >= num_layers:
                continue  # a checkpoint truncated by hf_overrides num_hidden_layers (a draft model, tests)
            if param is None:
                raise ValueError(f"model: checkpoint tensor {name!r} has no matching parameter")
            loader = getattr(param, "weight_loader", None)
            if loader is None:
                param.data.copy_(source[:].to(param.dtype))
            elif shard is None:
                loader(param, source)
            else:
                loader(param, source, shard)
            loaded.add(target if shard is None else f"{target}#{shard}")
    _check_complete(params, packed, loaded)


def _check_complete(params: dict[str, nn.Parameter], packed: dict[str, tuple[str, object]],
                    loaded: set[str]) -> None:
    shards: dict[str, set[object]] = {}
    for fused, shard in packed.values():
        shards.setdefault(fused, set()).add(shard)
    missing = []
    for name in params:
        frag = next((f for f in shards if f".{f}." in name), None)
        if frag is None:
            if name not in loaded:
                missing.append(name)
        else:
            missing += [f"{name}[{s}]" for s in shards[frag] if f"{name}#{s}" not in loaded]
    if missing:
        raise ValueError(f"model: checkpoint is missing {len(missing)} weight(s), e.g. {missing[:3]}")


def init_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Small uniform random weights (norms stay 1), deterministic per seed and parameter name.

    A sharded parameter draws the values of the whole (unsharded) parameter and keeps its slice
    through its weight loader, so a tensor-parallel model holds exactly the weights of TP=1."""
    owners = {f"{mod_name}.{pn}" if mod_name else pn: mod
              for mod_name, mod in model.named_modules() for pn, _ in mod.named_parameters(recurse=False)}
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.data.fill_(1.0)
            continue
        gen = torch.Generator(device=p.device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        owner = owners.get(name)
        loader = getattr(p, "weight_loader", None)
        if loader is None or getattr(owner, "tp_size", 1) == 1:
            p.data.uniform_(-2e-2, 2e-2, generator=gen)
            continue
        shape, shards = _unsharded_layout(owner, p)
        full = torch.empty(shape, dtype=p.dtype, device=p.device).uniform_(-2e-2, 2e-2, generator=gen)
        if shards is None:
            loader(p, full)
        else:
            for shard_id, start, size in shards:
                loader(p, full.narrow(0, start, size), shard_id)
        del full


def _unsharded_layout(layer: nn.Module, p: torch.Tensor) -> tuple[tuple[int, ...], list | None]:
    """The TP=1 shape of a sharded parameter and, for a fused one, its (shard id, first row, rows)."""
    from pagedserve.layers.linear import (MergedColumnParallelLinear, QKVParallelLinear, ReplicatedLinear,
                                          RowParallelLinear)
    from pagedserve.layers.vocab import VocabParallelEmbedding

    tp, rest = layer.tp_size, tuple(p.shape[1:])
    if isinstance(layer, QKVParallelLinear):
        q = layer.num_heads * tp * layer.head_dim
        kv = layer.num_kv_heads * tp // layer.kv_replicas * layer.head_dim
        return (q + 2 * kv, *rest), [("q", 0, q), ("k", q, kv), ("v", q + kv, kv)]
    if isinstance(layer, MergedColumnParallelLinear):
        starts = [sum(layer.out_sizes[:i]) for i in range(len(layer.out_sizes))]
        return (sum(layer.out_sizes), *rest), [(i, s, n) for i, (s, n) in enumerate(zip(starts, layer.out_sizes))]
    if isinstance(layer, VocabParallelEmbedding):
        return (layer.vocab_size, *rest), None
    if isinstance(layer, RowParallelLinear):
        return ((p.shape[0], p.shape[1] * tp) if p.dim() == 2 else tuple(p.shape)), None
    if isinstance(layer, ReplicatedLinear):
        return tuple(p.shape), None
    return (p.shape[0] * tp, *rest), None  # column-parallel
