"""Batched multi-LoRA for one linear layer: ``y[t] += (x[t] @ A[s_t]^T) @ B[s_t]^T`` for every token
``t`` whose request runs with the adapter in GPU slot ``s_t`` (tokens of the base model: no slot).

Two Triton kernels, as Punica / S-LoRA split it:

* **shrink** ``t[T, slices, R] = x @ A[s, slice]^T``: the rank-R projection of each token, per fused
  slice (q / k / v of a qkv layer, gate / up of gate_up; one slice otherwise). It is split over K
  (``split_k`` partials ``[split, T, slices, R]``, summed by the expand as it loads them): at decode
  a slice is one program otherwise, walking all of K alone (4,096-14,336 features in sequential
  tiles: latency-bound, about twice the step of the base model in run 37);
* **expand** ``y[:, off_i:off_i + w_i] += t[:, i] @ B[s, off_i:off_i + w_i]^T``, in place (the
  adapter's scaling is folded into B when it is loaded).

Tokens are *segment-gathered*: the host sorts the step's token indices by slot (``sorted_ids``) and
passes each slot's ``start`` and ``count`` in it. The grid is ``(cdiv(T, BLOCK_M), slices (x output
tiles), num_slots)``: program ``(m, n, s)`` handles tokens ``m*BLOCK_M ..`` of slot ``s``'s segment
and exits at once when the segment is shorter, so one launch serves any mix of adapters and base
requests, and its shape depends only on ``T`` and the number of slots — CUDA graphs capture it once
per batch bucket and replay it with new metadata in the same buffers. A token belongs to one
segment, so every output element has one writer (no atomics, deterministic).

Layouts: ``lora_a [S, slices, R, K]``, ``lora_b [S, N, R]`` (N = the layer's local output features,
the slices side by side), ``slice_offsets [slices + 1]`` (int32, on the device). ``R`` is the padded
rank (a power of two >= 16; zero rows / columns beyond an adapter's own rank).

Reference: ``lora_ref.lora_ref`` (torch, from per-token slots; no Triton import), used on the CPU by
the engine.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.kernels.lora_ref import lora_ref, segment_metadata  # noqa: F401 (re-exported)
from pagedserve.kernels.utils import cdiv, dot_precision


@triton.jit
def _shrink_kernel(x_ptr, a_ptr, t_ptr, ids_ptr, start_ptr, count_ptr, K, K_SPLIT, SPLIT,
                   stride_xt, stride_as, stride_asl, stride_ar, stride_tk, stride_tt, stride_tsl,
                   R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    sl = tl.program_id(1) // SPLIT
    ks = tl.program_id(1) % SPLIT
    s = tl.program_id(2)
    count = tl.load(count_ptr + s)
    if pid_m * BLOCK_M < count:
        start = tl.load(start_ptr + s)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < count
        tok = tl.load(ids_ptr + start + offs_m, mask=mask_m, other=0).to(tl.int64)
        offs_r = tl.arange(0, R)
        offs_k = tl.arange(0, BLOCK_K)
        a_base = a_ptr + s.to(tl.int64) * stride_as + sl * stride_asl
        acc = tl.zeros((BLOCK_M, R), dtype=tl.float32)
        k_end = tl.minimum(K, (ks + 1) * K_SPLIT)
        for k0 in range(ks * K_SPLIT, k_end, BLOCK_K):
            mk = (k0 + offs_k) < k_end
            xt = tl.load(x_ptr + tok[:, None] * stride_xt + (k0 + offs_k)[None, :],
                         mask=mask_m[:, None] & mk[None, :], other=0.0)
            at = tl.load(a_base + offs_r[:, None] * stride_ar + (k0 + offs_k)[None, :], mask=mk[None, :], other=0.0)
            acc += tl.dot(xt, tl.trans(at).to(xt.dtype), input_precision=PRECISION)
        tl.store(t_ptr + ks * stride_tk + tok[:, None] * stride_tt + sl * stride_tsl + offs_r[None, :], acc,
                 mask=mask_m[:, None])


@triton.jit
def _expand_kernel(t_ptr, b_ptr, y_ptr, ids_ptr, start_ptr, count_ptr, off_ptr, N_TILES, SPLIT,
                   stride_tk, stride_tt, stride_tsl, stride_bs, stride_bn, stride_yt,
                   R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    s = tl.program_id(2)
    count = tl.load(count_ptr + s)
    if pid_m * BLOCK_M < count:
        sl = pid_n // N_TILES
        tile = pid_n % N_TILES
        lo = tl.load(off_ptr + sl)
        width = tl.load(off_ptr + sl + 1) - lo
        if tile * BLOCK_N < width:
            start = tl.load(start_ptr + s)
            offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            mask_m = offs_m < count
            tok = tl.load(ids_ptr + start + offs_m, mask=mask_m, other=0).to(tl.int64)
            offs_r = tl.arange(0, R)
            offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
            mask_n = offs_n < width
            cols = lo + offs_n
            t_ptrs = t_ptr + tok[:, None] * stride_tt + sl * stride_tsl + offs_r[None, :]
            tt = tl.load(t_ptrs, mask=mask_m[:, None], other=0.0)
            for i in range(1, SPLIT):  # the shrink's K partials
                tt += tl.load(t_ptrs + i * stride_tk, mask=mask_m[:, None], other=0.0)
            bt = tl.load(b_ptr + s.to(tl.int64) * stride_bs + cols[None, :].to(tl.int64) * stride_bn + offs_r[:, None],
                         mask=mask_n[None, :], other=0.0)
            acc = tl.dot(tt.to(bt.dtype), bt, input_precision=PRECISION)
            mask = mask_m[:, None] & mask_n[None, :]
            y_ptrs = y_ptr + tok[:, None] * stride_yt + cols[None, :]
            y = tl.load(y_ptrs, mask=mask, other=0.0)
            tl.store(y_ptrs, (y.to(tl.float32) + acc).to(y.dtype), mask=mask)


def _block_m(num_tokens: int) -> int:
    return 16 if num_tokens <= 16 else (32 if num_tokens <= 512 else 64)


def shrink_split(num_tokens: int, K: int) -> int:
    """K partials of the shrink: at decode sizes about one per 512 features (at most 16), so the few
    (token block, slice, slot) programs do not each walk all of K; prefill batches have programs enough."""
    return max(1, min(16, K // 512)) if num_tokens <= 64 else 1


def lora_shrink(x: torch.Tensor, lora_a: torch.Tensor, sorted_ids: torch.Tensor, slot_start: torch.Tensor,
                slot_count: torch.Tensor, split_k: int | None = None) -> torch.Tensor:
    """``out[split, T, slices, R]`` (fp32): K partials of each token's ``x @ A[slot, slice]^T``
    (``lora_expand`` sums them); rows of tokens with no slot are uninitialised (never read)."""
    T, K = x.shape
    S, n_slices, R, K2 = lora_a.shape
    assert K == K2 and x.stride(1) == 1 and lora_a.stride(3) == 1, "x [T, K] and lora_a [S, slices, R, K]"
    block_k = 64 if K >= 64 else 16
    split = split_k or shrink_split(T, K)
    k_split = cdiv(cdiv(K, split), block_k) * block_k
    split = cdiv(K, k_split)
    out = torch.empty(split, T, n_slices, R, dtype=torch.float32, device=x.device)
    if T == 0:
        return out
    bm = _block_m(T)
    grid = (cdiv(T, bm), n_slices * split, S)
    _shrink_kernel[grid](x, lora_a, out, sorted_ids, slot_start, slot_count, K, k_split, split,
                         x.stride(0), lora_a.stride(0), lora_a.stride(1), lora_a.stride(2), out.stride(0),
                         out.stride(1), out.stride(2), R=R, BLOCK_M=bm, BLOCK_K=block_k,
                         PRECISION=dot_precision(x.dtype))
    return out


def lora_expand(t: torch.Tensor, lora_b: torch.Tensor, slice_offsets: torch.Tensor, max_slice_width: int,
                sorted_ids: torch.Tensor, slot_start: torch.Tensor, slot_count: torch.Tensor, y: torch.Tensor
                ) -> torch.Tensor:
    """``y[:, slice i] += t[:, i] @ B[slot, slice i]^T`` in place for every token with a slot; ``t``
    is the shrink's ``[split, T, slices, R]`` (or one ``[T, slices, R]``)."""
    if t.dim() == 3:
        t = t.unsqueeze(0)
    split, T, n_slices, R = t.shape
    S, N, R2 = lora_b.shape
    assert R == R2 and y.shape == (T, N) and y.stride(1) == 1 and lora_b.stride(2) == 1
    if T == 0:
        return y
    bm = _block_m(T)
    bn = 64 if max_slice_width >= 64 else 16
    n_tiles = cdiv(max_slice_width, bn)
    grid = (cdiv(T, bm), n_slices * n_tiles, S)
    _expand_kernel[grid](t, lora_b, y, sorted_ids, slot_start, slot_count, slice_offsets, n_tiles, split,
                         t.stride(0), t.stride(1), t.stride(2), lora_b.stride(0), lora_b.stride(1), y.stride(0),
                         R=R, BLOCK_M=bm, BLOCK_N=bn, PRECISION=dot_precision(lora_b.dtype))
    return y
