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
from pagedserve.layers.quantization.layer_names import ATTENTION_SCALE_SUFFIXES
from pagedserve.models.pipeline import skip_weight
from pagedserve.models.registry import check_architecture
from pagedserve import startup

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
    startup.mark("model_build")
    if mc.load_format == "dummy":
        init_dummy_weights(model, mc.seed)
    else:
        load_safetensors(model, mc.model, use_tqdm=use_tqdm)
    n_quant = process_weights_after_loading(model)
    startup.mark("weights")
    model.eval()
    logger.info("model %s loaded in %.2f s (%s%s, %.1fM params)", mc.arch.architecture,
                time.perf_counter() - t0, mc.dtype,
                f", {quant.describe()}: {n_quant} linear layers quantized" if quant else "",
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


def fused_target(name: str, packed: dict[str, tuple[str, object]]) -> tuple[str, object]:
    """(our parameter name, shard id or None) of a checkpoint tensor, for the model's fused layers."""
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
    splits: dict[str, list] = getattr(model, "checkpoint_splits", {})  # fused in the checkpoint (Phi-3)
    remap = getattr(model, "map_weight_name", None)  # e.g. per-expert tensors → stacked experts (models/moe.py)
    tied = getattr(getattr(model, "cfg", None), "tie_word_embeddings", False)
    loaded: set[str] = set()
    skipped: list[str] = []
    num_layers = getattr(getattr(model, "cfg", None), "num_layers", None)
    stage = getattr(model, "stage", None)  # a pipeline stage loads only its own tensors (models/pipeline.py)
    files = safetensors_files(model_dir)
    bar = tqdm(files, desc="Loading weights", unit="file", disable=not use_tqdm or len(files) < 2)
    for path in bar:
        for name, source in _tensors(path):
            if "rotary_emb.inv_freq" in name or (tied and name.endswith("lm_head.weight")):
                continue
            if stage is not None and skip_weight(name, stage):
                if not (tied and stage.is_last and name == "model.embed_tokens.weight"):
                    continue
                name = "lm_head.weight"  # the last stage's own copy of the tied embedding
            mapped = remap(name) if remap is not None else None
            target, shard = mapped if mapped is not None else fused_target(name, packed)
            if target is None:
                continue  # a tensor the model does not use (vision layers past the selected feature layer)
            param = params.get(target)
            if param is None and name.endswith(ATTENTION_SCALE_SUFFIXES):
                skipped.append(name)
                continue
            if param is None and num_layers is not None and _layer_index(name) >= num_layers:
                continue  # a checkpoint truncated by hf_overrides num_hidden_layers (a draft model, tests)
            if param is None:
                raise ValueError(f"model: checkpoint tensor {name!r} has no matching parameter")
            loader = getattr(param, "weight_loader", None)
            split = next((v for frag, v in splits.items() if f".{frag}." in name), None) if shard is None else None
            if split is not None and loader is not None:  # one checkpoint tensor, several shards
                shape = list(source.get_shape() if hasattr(source, "get_shape") else source.shape)
                if not shape or shape[0] != sum(rows for _, _, rows in split):
                    raise ValueError(f"model: fused checkpoint tensor {name!r} of shape {shape} cannot be split "
                                     f"into its shards ({[r for _, _, r in split]} rows)")
                for shard_id, start, rows in split:
                    loader(param, source[start:start + rows], shard_id)
            elif loader is None:
                param.data.copy_(source[:].to(param.dtype))
            elif shard is None:
                loader(param, source)
            else:
                loader(param, source, shard)
            loaded.add(target if shard is None else f"{target}#{shard}")
    if skipped:
        logger.warning("ignored %d KV-cache scale(s) of the checkpoint, e.g. %s (the fp8 KV cache uses scale 1)",
                       len(skipped), skipped[0])
    _check_complete(params, packed, loaded)


def _check_complete(params: dict[str, nn.Parameter], packed: dict[str, tuple[str, object]],
                    loaded: set[str]) -> None:
    shards: dict[str, set[object]] = {}
    for fused, shard in packed.values():
        shards.setdefault(fused, set()).add(shard)
    missing = []
    for name, p in params.items():
        if hasattr(p, "expected_shards"):  # the parameter tracks its own shards (layers/fused_moe.py)
            missing += [f"{name}[{s}]" for s in sorted(p.expected_shards - p.loaded_shards)]
            continue
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
    Integer (packed quantized) parameters get random bits; a parameter tagged ``dummy_init`` (a
    quantization method's scales or group indices) is filled by that function instead.

    A sharded parameter draws the values of the whole (unsharded) parameter and keeps its slice
    through its weight loader, so a tensor-parallel model holds exactly the weights of TP=1."""
    tied = getattr(getattr(model, "cfg", None), "tie_word_embeddings", False)
    owners = {f"{mod_name}.{pn}" if mod_name else pn: mod
              for mod_name, mod in model.named_modules() for pn, _ in mod.named_parameters(recurse=False)}
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.data.fill_(1.0)
            continue
        if getattr(p, "dummy_value", None) is not None:  # a quantization scale (layers/quantization)
            p.data.fill_(p.dummy_value)
            continue
        # a pipeline stage's own copy of a tied embedding draws the embedding's values
        seed_name = "model.embed_tokens.weight" if name == "lm_head.weight" and tied else name
        gen = torch.Generator(device=p.device).manual_seed(seed * 1_000_003 + zlib.crc32(seed_name.encode()))
        fill = getattr(p, "dummy_init", None) or _random_fill
        owner = owners.get(name)
        loader = getattr(p, "weight_loader", None)
        if loader is None or getattr(owner, "tp_size", 1) == 1:
            fill(p.data, gen)
            continue
        shape, shards = _unsharded_layout(owner, p)
        full = torch.empty(shape, dtype=p.dtype, device=p.device)
        fill(full, gen)
        if shards is None:
            loader(p, full)
        else:
            for shard_id, dim, start, size in shards:
                loader(p, full if dim is None else full.narrow(dim, start, size), shard_id)
        del full


def _random_fill(t: torch.Tensor, gen: torch.Generator) -> None:
    """Uniform in ±2e-2 for float parameters; over the whole range of an 8-bit quantized weight
    (int8, fp8), whose dummy scale (``dummy_value``) maps it back to ±2e-2; random bits for packed
    integers (int4 in int32)."""
    if t.dtype == torch.int8:
        t.copy_(torch.randint(-127, 128, t.shape, dtype=t.dtype, device=t.device, generator=gen))
    elif t.is_floating_point() and t.element_size() == 1:
        bound = float(torch.finfo(t.dtype).max)
        t.copy_(torch.empty(t.shape, device=t.device).uniform_(-bound, bound, generator=gen).to(t.dtype))
    elif t.is_floating_point():
        t.uniform_(-2e-2, 2e-2, generator=gen)
    else:  # packed integers: random bits
        info = torch.iinfo(t.dtype)
        t.copy_(torch.randint(info.min, info.max, t.shape, generator=gen, device=t.device, dtype=t.dtype))


def _unsharded_layout(layer: nn.Module, p: torch.Tensor) -> tuple[tuple[int, ...], list | None]:
    """The TP=1 shape of a sharded parameter and, for a fused one, its shards as (shard id, dim,
    first entry, entries) along its output dimension (dim None: every shard gets all of it)."""
    from pagedserve.layers.linear import (MergedColumnParallelLinear, QKVParallelLinear, ReplicatedLinear,
                                          RowParallelLinear)
    from pagedserve.layers.vocab import VocabParallelEmbedding

    if hasattr(layer, "unsharded_shape"):  # its loader takes the whole stacked tensor (layers/fused_moe.py)
        return layer.unsharded_shape(p), None
    tp, shape = layer.tp_size, list(p.shape)
    if isinstance(layer, VocabParallelEmbedding):
        return (layer.vocab_size, *shape[1:]), None
    if isinstance(layer, ReplicatedLinear):
        return tuple(shape), None
    if isinstance(layer, RowParallelLinear):
        dim = getattr(p, "input_dim", None)
        if dim is not None:
            shape[dim] *= tp
        return tuple(shape), None
    dim = getattr(p, "output_dim", None)  # column-parallel
    factor = p.pack_factor if dim is not None and getattr(p, "packed_dim", None) == dim else 1
    if isinstance(layer, QKVParallelLinear):
        q = layer.num_heads * tp * layer.head_dim
        kv = layer.num_kv_heads * tp // layer.kv_replicas * layer.head_dim
        parts = [("q", 0, q), ("k", q, kv), ("v", q + kv, kv)]
    elif isinstance(layer, MergedColumnParallelLinear):
        parts = [(i, sum(layer.out_sizes[:i]), n) for i, n in enumerate(layer.out_sizes)]
    else:
        if dim is not None:
            shape[dim] *= tp
        return tuple(shape), None
    if dim is None:
        return tuple(shape), [(sid, None, 0, 0) for sid, _, _ in parts]
    shape[dim] = sum(n for _, _, n in parts) // factor
    return tuple(shape), [(sid, dim, start // factor, n // factor) for sid, start, n in parts]
