"""Sharded loading, in one process (no process group: building and loading a rank's model needs
no collective): each rank reads only its own slices of the safetensors (bytes counted at the
``safe_open`` slices), and the rank shards stitched together are the TP=1 weights — for every
architecture, at TP=2 and TP=4 (4 ranks > 2 KV heads: each KV head is replicated on 2 ranks).
Dummy weights are the same at every TP size."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

import pagedserve.models.loader as loader
from pagedserve.engine.arg_utils import EngineArgs
from pagedserve.distributed.parallel_state import get_tp_size, tp_context
from pagedserve.models.loader import build_model
from pagedserve.utils import cdiv
from tests.runtime.model_factory import ARCHS

SHARDED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head")


class _Slice:
    def __init__(self, inner, name: str, reads: list) -> None:
        self.inner, self.name, self.reads = inner, name, reads

    def get_shape(self):
        return self.inner.get_shape()

    def get_dtype(self):
        return self.inner.get_dtype()

    def __getitem__(self, key):
        t = self.inner[key]
        self.reads.append((self.name, key, t.numel() * t.element_size()))
        return t


class _File:
    def __init__(self, inner, reads: list) -> None:
        self.inner, self.reads = inner, reads

    def keys(self):
        return self.inner.keys()

    def get_slice(self, name: str) -> _Slice:
        return _Slice(self.inner.get_slice(name), name, self.reads)

    def get_tensor(self, name: str):  # the loader must not read whole tensors this way
        t = self.inner.get_tensor(name)
        self.reads.append((name, "get_tensor", t.numel() * t.element_size()))
        return t


@contextmanager
def _recording(monkeypatch, reads: list):
    real = loader.safe_open

    @contextmanager
    def safe_open(path, framework, device):
        with real(path, framework=framework, device=device) as f:
            yield _File(f, reads)

    monkeypatch.setattr(loader, "safe_open", safe_open)
    try:
        yield
    finally:
        monkeypatch.setattr(loader, "safe_open", real)


def _model_config(model_dir: str, load_format: str = "auto"):
    return EngineArgs(model=model_dir, device="cpu", dtype="float32", load_format=load_format).create_engine_config().model_config


def _build(mc, rank: int, tp: int) -> dict[str, torch.Tensor]:
    with tp_context(rank, tp):
        model = build_model(mc, "cpu", use_tqdm=False)
    assert get_tp_size() == 1  # restored: later models in this process are unsharded
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _expected_shard(full: dict[str, torch.Tensor], name: str, rank: int, tp: int, arch) -> torch.Tensor:
    """The TP=1 parameter ``name`` cut for ``rank`` (the sharding spec, written out)."""
    w = full[name]
    d = arch.head_dim
    if ".qkv_proj." in name:
        q_rows, kv_rows = arch.num_heads * d, arch.num_kv_heads * d
        q, k, v = w.split([q_rows, kv_rows, kv_rows], dim=0)
        kv_ranks = min(tp, arch.num_kv_heads)  # fewer KV heads than ranks: replicated
        kv_rank = rank * kv_ranks // tp
        return torch.cat([q.chunk(tp)[rank], k.chunk(kv_ranks)[kv_rank], v.chunk(kv_ranks)[kv_rank]])
    if ".gate_up_proj." in name:
        gate, up = w.chunk(2)
        return torch.cat([gate.chunk(tp)[rank], up.chunk(tp)[rank]])
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        return w.chunk(tp, dim=1)[rank]
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):
        shard = cdiv(w.shape[0], tp)
        out = torch.zeros(shard, w.shape[1])
        rows = w[rank * shard:(rank + 1) * shard]
        out[:len(rows)] = rows
        return out
    return w  # norms, the row-parallel layers' biases: replicated


@pytest.mark.parametrize("arch", list(ARCHS))
def test_each_rank_reads_only_its_slices(tiny_models, monkeypatch, arch):
    mc = _model_config(tiny_models[arch])
    a = mc.arch
    full_reads: list = []
    with _recording(monkeypatch, full_reads):
        full = _build(mc, 0, 1)
    tensor_bytes = {n: b for n, _, b in full_reads}  # TP=1 reads each tensor once, whole
    assert len(tensor_bytes) == len(full_reads)
    total = sum(tensor_bytes.values())
    replicated = sum(b for n, b in tensor_bytes.items() if not any(f".{s}." in n or n.startswith(f"{s}.")
                                                                   for s in SHARDED) and "bias" not in n)
    for tp in (2, 4):
        for rank in range(tp):
            reads: list = []
            with _recording(monkeypatch, reads):
                shard = _build(mc, rank, tp)
            assert all(key != "get_tensor" for _, key, _ in reads)
            per_tensor: dict[str, int] = {}
            for name, _, b in reads:
                per_tensor[name] = per_tensor.get(name, 0) + b
            assert per_tensor.keys() == tensor_bytes.keys()  # every tensor once ...
            for name, b in per_tensor.items():  # ... but only this rank's part of a sharded one
                if name.endswith(".weight") and any(f".{s}." in name or name.startswith(f"{s}.") for s in SHARDED):
                    kv = name.endswith(("k_proj.weight", "v_proj.weight"))
                    parts = min(tp, a.num_kv_heads) if kv else tp
                    assert b == tensor_bytes[name] // parts, (name, b, tensor_bytes[name])
            read = sum(per_tensor.values())
            assert read < total / tp + replicated + total * 0.05, (tp, rank, read, total)
            for name, p in shard.items():
                torch.testing.assert_close(p, _expected_shard(full, name, rank, tp, a), rtol=0, atol=0, msg=name)


def test_dummy_weights_do_not_depend_on_tp(tiny_models):
    mc = _model_config(tiny_models["qwen2"], load_format="dummy")
    full = _build(mc, 0, 1)
    for tp in (2, 4):
        for rank in range(tp):
            for name, p in _build(mc, rank, tp).items():
                torch.testing.assert_close(p, _expected_shard(full, name, rank, tp, mc.arch), rtol=0, atol=0, msg=name)
