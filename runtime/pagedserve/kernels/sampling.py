"""Fused temperature sampling: one pass over the logits instead of ~7 (cast, argmax, divide,
softmax, noise, divide, argmax).

Sampling ``softmax(l / T)`` by the exponential race ``argmax(p / q)``, ``q ~ Exp(1)``, equals the
Gumbel-max trick ``argmax(l / T + g)`` with ``g = -log(-log u)``, ``u ~ U(0, 1)``: the kernel reads
each logit once, adds the noise from Triton's counter-based Philox generator (``seed``, element
index) and keeps a running (max, argmax). Rows with ``T == 0`` take the plain argmax (no noise).
Grid ``(B, S)``: ``S`` programs per row each own a slice of the vocabulary and write a partial
(max, index); the host merges the S partials with one argmax + gather. Ties go to the lowest
index, as in ``torch.argmax``. The split count, slice length, seed and row stride are runtime
arguments, not specialised: one compiled variant serves every batch size (a variant per batch
size compiled in the middle of a run on the H200 and halved its throughput, run 15).
Reference: :func:`sample_ref`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.kernels.jit import jit_unspecialized
from pagedserve.kernels.utils import cdiv, num_sms

BLOCK_V = 2048
MAX_SPLITS = 32


def sample_ref(logits: torch.Tensor, temperature: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Gumbel-max with given uniforms ``u`` [B, V]; rows with temperature 0 take the argmax."""
    x = logits.float()
    t = temperature.float().unsqueeze(1)
    u = uniform.clamp(1e-20, 1.0 - 1e-7)
    noisy = x / torch.where(t > 0, t, torch.ones_like(t)) - torch.log(-torch.log(u))
    return torch.where(t.squeeze(1) > 0, noisy.argmax(dim=-1), x.argmax(dim=-1))


@jit_unspecialized("seed", "stride_row", "split_len", "num_splits")
def _sample_kernel(logits_ptr, temp_ptr, part_val_ptr, part_idx_ptr, V, stride_row, seed, split_len, num_splits,
                   BLOCK: tl.constexpr):
    row = tl.program_id(0)
    split = tl.program_id(1)
    t = tl.load(temp_ptr + row)
    noisy = t > 0.0
    inv_t = 1.0 / tl.where(noisy, t, 1.0)
    start = split * split_len
    end = tl.minimum(start + split_len, V)
    base = logits_ptr + row.to(tl.int64) * stride_row
    offs = tl.arange(0, BLOCK)
    best_val = tl.max(tl.full([BLOCK], float("-inf"), tl.float32), 0)
    best_idx = tl.sum(tl.zeros([BLOCK], tl.int32), 0) + start
    for s in range(start, end, BLOCK):
        cols = s + offs
        mask = cols < end
        x = tl.load(base + cols, mask=mask, other=float("-inf")).to(tl.float32)
        if noisy:
            u = tl.rand(seed, row * V + cols)
            u = tl.minimum(tl.maximum(u, 1e-20), 1.0 - 1e-7)
            x = x * inv_t - tl.log(-tl.log(u))
        x = tl.where(mask, x, float("-inf"))
        m = tl.max(x, 0)
        i = tl.argmax(x, 0) + s
        better = m > best_val
        best_idx = tl.where(better, i, best_idx)
        best_val = tl.where(better, m, best_val)
    tl.store(part_val_ptr + row * num_splits + split, best_val)
    tl.store(part_idx_ptr + row * num_splits + split, best_idx)


def sample_fused(logits: torch.Tensor, temperature: torch.Tensor, seed: int) -> torch.Tensor:
    """logits [B, V] (any float dtype, unit last stride), temperature [B] float32 (0 = greedy),
    seed: the Philox key of this call → sampled token ids [B] int64."""
    B, V = logits.shape
    assert logits.stride(1) == 1 and temperature.shape == (B,)
    if B == 0:
        return torch.empty(0, dtype=torch.long, device=logits.device)
    # enough programs for about two per SM, but no slice shorter than one block
    splits = max(1, min(MAX_SPLITS, cdiv(2 * num_sms(logits.device), B), cdiv(V, BLOCK_V)))
    split_len = cdiv(cdiv(V, splits), BLOCK_V) * BLOCK_V
    splits = cdiv(V, split_len)
    part_val = torch.empty((B, splits), dtype=torch.float32, device=logits.device)
    part_idx = torch.empty((B, splits), dtype=torch.int32, device=logits.device)
    _sample_kernel[(B, splits)](logits, temperature, part_val, part_idx, V, logits.stride(0),
                                seed % (2**31 - 1), split_len, splits, BLOCK=BLOCK_V, num_warps=4)
    if splits == 1:
        return part_idx[:, 0].long()
    best = part_val.argmax(dim=1, keepdim=True)
    return part_idx.gather(1, best).squeeze(1).long()


__all__ = ["sample_fused", "sample_ref"]
