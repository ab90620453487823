"""Torch reference of the multi-LoRA kernels (``kernels/lora.py``): what the engine runs on the CPU.
No Triton import here."""
from __future__ import annotations

import torch


def lora_ref(x: torch.Tensor, y: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
             slice_offsets: list[int], token_slots: torch.Tensor, active_slots: list[int] | None = None
             ) -> torch.Tensor:
    """Add the LoRA delta to ``y`` in place (and return it). ``token_slots[T]``: each token's slot or
    -1; ``active_slots``: the slots present (computed from ``token_slots`` when None)."""
    if active_slots is None:
        active_slots = sorted(set(token_slots.tolist()) - {-1})
    for s in active_slots:
        rows = (token_slots == s).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        xs = x.index_select(0, rows).float()
        delta = torch.empty(rows.numel(), y.shape[1], dtype=torch.float32, device=y.device)
        for i in range(len(slice_offsets) - 1):
            lo, hi = slice_offsets[i], slice_offsets[i + 1]
            delta[:, lo:hi] = (xs @ lora_a[s, i].float().t()) @ lora_b[s, lo:hi].float().t()
        y.index_add_(0, rows, delta.to(y.dtype))
    return y


def segment_metadata(token_slots: torch.Tensor, num_slots: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sorted_ids, start, count)`` of per-token slots (tests; the engine builds them on the host)."""
    slots = token_slots.long()
    keep = slots >= 0
    order = torch.argsort(torch.where(keep, slots, num_slots), stable=True)
    count = torch.bincount(slots[keep], minlength=num_slots)[:num_slots]
    start = torch.cumsum(count, 0) - count
    return order.to(torch.int32), start.to(torch.int32), count.to(torch.int32)
