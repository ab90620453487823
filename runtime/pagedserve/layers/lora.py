"""A linear layer's LoRA slots: the weights of up to ``max_loras`` adapters, stacked so that one
kernel pair applies every adapter of a step at once (``kernels/lora.py``), and the step's token →
slot metadata that every layer shares (:class:`LoRABatch`, filled by ``worker/lora_manager.py``).

A layer with LoRA carries one :class:`LoRALinear` as ``layer.lora``; ``LinearBase.matmul`` adds
its delta after the base product (quantized or not). A row-parallel layer adds it to its partial
sum, before the all-reduce: ``sum_r (x_r A_r^T) B^T = x A^T B^T`` with A sharded on its input.
"""
from __future__ import annotations

import torch

from pagedserve.kernels.utils import next_pow2


class LoRABatch:
    """The step's adapter layout, in fixed-size buffers (CUDA graphs replay them with new values)."""

    def __init__(self, num_slots: int, max_tokens: int, device: torch.device) -> None:
        self.num_slots = num_slots
        self.max_tokens = max_tokens
        self.use_triton = device.type == "cuda"
        self.sorted_ids = torch.zeros(max_tokens, dtype=torch.int32, device=device)  # token indices by slot
        self.slot_start = torch.zeros(num_slots, dtype=torch.int32, device=device)
        self.slot_count = torch.zeros(num_slots, dtype=torch.int32, device=device)
        self.token_slots = torch.full((max_tokens,), -1, dtype=torch.long, device=device)  # the torch path
        self.active: list[int] = []  # slots with tokens this step (host)
        # launch the kernels even when no token has an adapter: on CUDA, where graphs captured with
        # empty segments must hold the launches for the steps that replay them with adapters
        self.always = self.use_triton


class LoRALinear:
    """Slot weights of one linear layer: ``lora_a [S, slices, R, in]``, ``lora_b [S, out, R]``
    (the adapter's scaling folded into B), ``slice_widths``: the local output features of each fused
    slice (q, k, v / gate, up / the whole layer)."""

    def __init__(self, batch: LoRABatch, in_features: int, slice_widths: list[int], max_rank: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.batch = batch
        self.rank = max(16, next_pow2(max_rank))  # tl.dot wants >= 16 along every side
        self.slice_widths = list(slice_widths)
        offs = [0]
        for w in slice_widths:
            offs.append(offs[-1] + w)
        self.offsets = offs
        self.offsets_t = torch.tensor(offs, dtype=torch.int32, device=device)
        S, R = batch.num_slots, self.rank
        self.lora_a = torch.zeros(S, len(slice_widths), R, in_features, dtype=dtype, device=device)
        self.lora_b = torch.zeros(S, offs[-1], R, dtype=dtype, device=device)

    def set_slot(self, slot: int, slices: list[tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        """Write an adapter's ``(A [r, in], B [w, r] * scaling)`` per slice (None: no LoRA there)."""
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        for i, ab in enumerate(slices):
            if ab is None:
                continue
            a, b = ab
            r = a.shape[0]
            lo, hi = self.offsets[i], self.offsets[i + 1]
            self.lora_a[slot, i, :r].copy_(a, non_blocking=True)
            self.lora_b[slot, lo:hi, :r].copy_(b, non_blocking=True)

    def clear_slot(self, slot: int) -> None:
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()

    def apply(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y += LoRA(x)`` for the tokens of this step that run with an adapter."""
        b = self.batch
        if not b.active and not b.always:
            return y
        x2 = x.reshape(-1, x.shape[-1])
        y2 = y.view(-1, y.shape[-1])
        if b.use_triton:
            from pagedserve.kernels.lora import lora_expand, lora_shrink

            t = lora_shrink(x2, self.lora_a, b.sorted_ids, b.slot_start, b.slot_count)
            lora_expand(t, self.lora_b, self.offsets_t, max(self.slice_widths), b.sorted_ids, b.slot_start,
                        b.slot_count, y2)
        else:
            from pagedserve.kernels.lora_ref import lora_ref

            lora_ref(x2, y2, self.lora_a, self.lora_b, self.offsets, b.token_slots[:x2.shape[0]], b.active)
        return y
