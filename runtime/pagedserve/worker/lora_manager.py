"""The worker's LoRA adapters: a CPU cache of loaded adapters (``--max-cpu-loras``, LRU) and the GPU
slots (``--max-loras``, LRU) that the layers' kernels read, plus the per-step token → slot layout.

Each rank reads an adapter's PEFT files itself and keeps only its shard: for a column-parallel layer
(qkv, gate_up) A whole and B's rows of this rank's output features, per fused slice (KV heads
replicated over ranks take their group's rows); for a row-parallel layer (o, down) A's columns of
this rank's input features and B whole. The scaling is folded into B.

Per step, :meth:`LoRAManager.prepare` puts every adapter of the step in a slot (the scheduler
never runs more distinct adapters than slots; a slot whose adapter the step does not use is
reused, least recently used first), then writes the step's metadata — each token's slot, and the
token indices sorted by slot with each slot's start and count — into the fixed-size buffers of
:class:`~pagedserve.layers.lora.LoRABatch`.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pagedserve.config import LoRAConfig
from pagedserve.layers.linear import LinearBase, QKVParallelLinear, RowParallelLinear
from pagedserve.layers.lora import LoRABatch, LoRALinear
from pagedserve.lora.peft import PEFTAdapter, load_peft_adapter
from pagedserve.lora.request import LoRARequest

if TYPE_CHECKING:
    from pagedserve.worker.input_batch import HostInput

logger = logging.getLogger(__name__)

#: our fused layer → the checkpoint modules in its slices, in order
_SLICES = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj"),
           "o_proj": ("o_proj",), "down_proj": ("down_proj",)}

# one adapter on this rank: our layer prefix → per slice (A, B * scaling) or None
Shards = dict[str, list[tuple[torch.Tensor, torch.Tensor] | None]]


class LoRAManager:
    def __init__(self, model: nn.Module, cfg: LoRAConfig, num_layers: int, dtype: torch.dtype,
                 device: torch.device, max_tokens: int) -> None:
        self.cfg = cfg
        self.num_layers = num_layers
        self.dtype, self.device = dtype, device
        self.num_slots = cfg.max_loras
        self.max_cpu = max(cfg.max_cpu_loras or cfg.max_loras, cfg.max_loras)
        self.batch = LoRABatch(self.num_slots, max_tokens, device)
        self.layers: dict[str, LinearBase] = {}
        for m in model.modules():
            if isinstance(m, LinearBase) and m.prefix.rsplit(".", 1)[-1] in _SLICES:
                m.lora = LoRALinear(self.batch, m.input_size, _slice_widths(m), cfg.max_lora_rank, dtype, device)
                self.layers[m.prefix] = m
        if not self.layers:
            raise ValueError("enable_lora: this model has no linear layer LoRA can target")
        self.supported = sorted({name for layer in self.layers for name in _SLICES[layer.rsplit(".", 1)[-1]]})
        self.cpu: OrderedDict[int, tuple[LoRARequest, Shards]] = OrderedDict()  # LRU, most recent last
        self.slot_of: dict[int, int] = {}  # adapter id → slot
        self.slots: list[int | None] = [None] * self.num_slots  # slot → adapter id
        self.slot_lru: OrderedDict[int, None] = OrderedDict()  # adapter ids in slots, most recent last
        self.num_loads = self.num_slot_loads = 0  # from disk / into a slot (tests, logs)

    # -- the CPU cache --------------------------------------------------------------------------
    def add_lora(self, req: LoRARequest) -> bool:
        """Read (and check) an adapter into the CPU cache; False if it was there already."""
        known = self.cpu.get(req.lora_int_id)
        if known is not None:
            if known[0].lora_path != req.lora_path or known[0].lora_name != req.lora_name:
                raise ValueError(f"lora_int_id {req.lora_int_id} is already used by adapter "
                                 f"{known[0].lora_name!r} ({known[0].lora_path}); give each adapter its own id")
            self.cpu.move_to_end(req.lora_int_id)
            return False
        adapter = load_peft_adapter(req.lora_path, self.cfg.max_lora_rank, self.supported, self.num_layers)
        shards = self._shard(adapter)
        while len(self.cpu) >= self.max_cpu:
            self.cpu.popitem(last=False)  # an adapter still in a slot keeps working there
        self.cpu[req.lora_int_id] = (req, shards)
        self.num_loads += 1
        logger.info("LoRA adapter %r (id %d, rank %d) loaded from %s", req.lora_name, req.lora_int_id,
                    adapter.rank, req.lora_path)
        return True

    def remove_lora(self, lora_id: int) -> bool:
        found = self.cpu.pop(lora_id, None) is not None
        slot = self.slot_of.pop(lora_id, None)
        if slot is not None:
            self.slots[slot] = None
            self.slot_lru.pop(lora_id, None)
            for layer in self.layers.values():
                layer.lora.clear_slot(slot)
            found = True
        return found

    def list_loras(self) -> list[int]:
        return sorted(set(self.cpu) | set(self.slot_of))

    def _shard(self, adapter: PEFTAdapter) -> Shards:
        pin = self.device.type == "cuda"
        out: Shards = {}
        for prefix, layer in self.layers.items():
            base, kind = prefix.rsplit(".", 1)
            slices: list[tuple[torch.Tensor, torch.Tensor] | None] = []
            for i, name in enumerate(_SLICES[kind]):
                w = adapter.modules.get(f"{base}.{name}")
                if w is None:
                    slices.append(None)
                    continue
                a, b = _rank_shard(layer, i, w.lora_a, w.lora_b * w.scaling)
                a, b = a.to(self.dtype).contiguous(), b.to(self.dtype).contiguous()
                slices.append((a.pin_memory(), b.pin_memory()) if pin else (a, b))
            if any(s is not None for s in slices):
                out[prefix] = slices
        return out

    # -- the GPU slots --------------------------------------------------------------------------
    def _activate(self, req: LoRARequest, needed: set[int]) -> int:
        lid = req.lora_int_id
        slot = self.slot_of.get(lid)
        if slot is not None:
            self.slot_lru.move_to_end(lid)
            return slot
        if lid not in self.cpu:
            self.add_lora(req)  # evicted from the CPU cache (or a rank that never saw it): read again
        free = [i for i, a in enumerate(self.slots) if a is None]
        if free:
            slot = free[0]
        else:
            victim = next((a for a in self.slot_lru if a not in needed), None)
            if victim is None:
                raise RuntimeError(f"a step uses more LoRA adapters than max_loras={self.num_slots}")
            slot = self.slot_of.pop(victim)
            del self.slot_lru[victim]
        _, shards = self.cpu[lid]
        self.cpu.move_to_end(lid)
        for prefix, layer in self.layers.items():
            slices = shards.get(prefix)
            if slices is None:
                layer.lora.clear_slot(slot)
            else:
                layer.lora.set_slot(slot, slices)
        self.slots[slot] = lid
        self.slot_of[lid] = slot
        self.slot_lru[lid] = None
        self.num_slot_loads += 1
        return slot

    def prepare(self, h: "HostInput") -> None:
        """Slots for the step's adapters and its token → slot metadata."""
        b = self.batch
        T = h.num_tokens
        if T > b.max_tokens:
            raise RuntimeError(f"a step of {T} tokens is larger than the LoRA metadata buffers ({b.max_tokens})")
        if h.lora_ids is None or not h.lora_requests:
            if b.active or b.always:
                b.slot_count.zero_()
                b.active = []
            return
        needed = set(h.lora_requests)
        slot_of_id = {lid: self._activate(req, needed) for lid, req in h.lora_requests.items()}
        lut = np.full(max(slot_of_id) + 1, -1, dtype=np.int64)
        for lid, slot in slot_of_id.items():
            lut[lid] = slot
        token_slots = np.where(h.lora_ids > 0, lut[h.lora_ids], -1)
        counts = np.bincount(token_slots[token_slots >= 0], minlength=self.num_slots)[:self.num_slots]
        b.active = sorted(int(s) for s in np.nonzero(counts)[0])
        if b.use_triton:
            order = np.argsort(np.where(token_slots >= 0, token_slots, self.num_slots), kind="stable")
            n = int(counts.sum())
            starts = np.cumsum(counts) - counts
            _copy_in(b.sorted_ids[:n], order[:n].astype(np.int32))
            _copy_in(b.slot_start, starts.astype(np.int32))
            _copy_in(b.slot_count, counts.astype(np.int32))
        else:
            b.token_slots.fill_(-1)  # rows past T (a padded piecewise bucket) take no adapter
            b.token_slots[:T] = torch.from_numpy(token_slots)


def _copy_in(dst: torch.Tensor, src: np.ndarray) -> None:
    t = torch.from_numpy(src)
    if dst.device.type == "cuda":
        t = t.pin_memory()
    dst.copy_(t, non_blocking=True)


def _slice_widths(layer: LinearBase) -> list[int]:
    if isinstance(layer, QKVParallelLinear):
        return [layer.q_size, layer.kv_size, layer.kv_size]
    sizes = getattr(layer, "out_sizes", None)
    if sizes is not None:
        return [s // layer.tp_size for s in sizes]
    return [layer.output_size]


def _rank_shard(layer: LinearBase, i: int, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's ``(A, B)`` of slice ``i`` (shapes checked against the layer: a clear error for an
    adapter trained on another model)."""
    tp, rank = layer.tp_size, layer.tp_rank
    name = f"{layer.prefix} slice {i}"
    if isinstance(layer, RowParallelLinear):
        full_in = layer.input_size * tp
        if a.shape[1] != full_in or b.shape[0] != layer.output_size:
            raise ValueError(f"LoRA weights for {name} have shapes A {tuple(a.shape)}, B {tuple(b.shape)}; the "
                             f"model's layer is {full_in} -> {layer.output_size} (an adapter of another model?)")
        n = layer.input_size
        return a[:, rank * n:(rank + 1) * n], b
    widths = _slice_widths(layer)
    w = widths[i]
    if isinstance(layer, QKVParallelLinear):
        full = layer.q_size * tp if i == 0 else layer.kv_size * tp // layer.kv_replicas
        part = rank if i == 0 else rank // layer.kv_replicas
    else:
        full, part = w * tp, rank
    if a.shape[1] != layer.input_size or b.shape[0] != full:
        raise ValueError(f"LoRA weights for {name} have shapes A {tuple(a.shape)}, B {tuple(b.shape)}; the "
                         f"model's layer is {layer.input_size} -> {full} (an adapter of another model?)")
    return a, b[part * w:(part + 1) * w]


