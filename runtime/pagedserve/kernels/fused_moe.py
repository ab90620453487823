"""Fused Mixture-of-Experts MLP (Triton). Reference: ``kernels/fused_moe_ref.fused_experts_ref``.

``out[t] = sum_k w[t, k] * W2[e] @ (silu(W1[e] @ x_t) * (W3[e] @ x_t))`` with ``e = topk_ids[t, k]``;
``w13 [E, 2I, H]`` (gate rows, then up rows), ``w2 [E, H, I]``, fp32 ``topk_weights``.

Two paths, both free of host synchronisation (CUDA-graph capturable):

- **grouped** (prefill, large batches): the T*K (token, slot) pairs are sorted by expert and each
  expert's run padded to ``BLOCK_M`` (``moe_align_block_size``), so that every ``BLOCK_M`` rows of
  the sorted order share one expert. Kernel 1 is a grouped GEMM over those blocks: a program
  computes the gate *and* the up tile of the same ``BLOCK_N`` columns from the same A rows and
  writes ``silu(gate) * up`` (the activation fused in the epilogue: the ``[T*K, 2I]`` intermediate
  is never stored). Kernel 2 multiplies by ``W2[e]``, scales each row by its routing weight and
  writes ``[T*K, H]``; the K rows of a token are summed at the end. Each expert's weights are
  read once per ``BLOCK_M`` rows routed to it.
- **decode** (T <= ``DECODE_MAX_TOKENS``): no sort. Kernel 1 has one program per (pair, column
  block), a GEMV against its expert's gate/up rows; kernel 2 one program per (token, column block)
  walking the token's K experts, so the weighting and the top-k sum happen in registers and the
  output is written once. At batch 1 each active expert is read exactly once.

fp32 operands multiply in full precision (``dot_precision``); gate/up are rounded to the input
dtype before the activation, like the reference's separate linear and SiLU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.kernels.fused_moe_ref import moe_align_block_size_ref
from pagedserve.kernels.utils import cdiv, dot_precision, next_pow2

__all__ = ["fused_experts", "moe_align_block_size", "DECODE_MAX_TOKENS"]

DECODE_MAX_TOKENS = 2  # batches up to this many tokens take the sort-free GEMV path


def moe_align_block_size(topk_ids: torch.Tensor, block_size: int, num_experts: int):
    """See ``fused_moe_ref.moe_align_block_size_ref`` (device-side torch ops; no sync)."""
    return moe_align_block_size_ref(topk_ids, block_size, num_experts)


@triton.jit
def _silu_mul(gate, up, like_ptr):
    """silu(gate) * up with the reference's roundings (gate, up, silu and the product in the dtype
    of ``like_ptr``'s elements)."""
    dtype = like_ptr.dtype.element_ty
    g = gate.to(dtype).to(tl.float32)
    u = up.to(dtype).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
    return act * u


@triton.jit
def _grouped_gemm_kernel(a_ptr, b_ptr, c_ptr, w_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_pad_ptr,
                         num_pairs, N, K, stride_am, stride_be, stride_bn, stride_cm,
                         A_DIV: tl.constexpr, GATED: tl.constexpr, MUL_WEIGHT: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         PRECISION: tl.constexpr):
    """C[pair, n] for the BLOCK_M sorted pairs of program row ``pid_m`` (one expert).

    A row = pair // A_DIV (the token for w13, the pair itself for w2). GATED: B holds 2N rows
    (gate, up) and C gets silu(gate) * up [.., N]. MUL_WEIGHT: rows scaled by the routing weight."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(num_post_pad_ptr):
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ids_ptr + offs_m)
    valid = pair < num_pairs
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    rows = (pair // A_DIV).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + expert * stride_be + offs_n[None, :].to(tl.int64) * stride_bn + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mk = (k0 + offs_k) < K
        a = tl.load(a_ptrs, mask=valid[:, None] & mk[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=mk[:, None] & mask_n[None, :], other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION)
        if GATED:
            b_up = tl.load(b_ptrs + N * stride_bn, mask=mk[:, None] & mask_n[None, :], other=0.0)
            acc_up += tl.dot(a, b_up, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if GATED:
        acc = _silu_mul(acc, acc_up, a_ptr)
    if MUL_WEIGHT:  # the expert's output rounded, then weighted (as the reference)
        acc = acc.to(c_ptr.dtype.element_ty).to(tl.float32) * tl.load(w_ptr + pair, mask=valid, other=0.0)[:, None]
    c_ptrs = c_ptr + pair[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=valid[:, None] & mask_n[None, :])


@triton.jit
def _decode_w13_kernel(x_ptr, w_ptr, ids_ptr, out_ptr, I, H, stride_xm, stride_we, stride_wn, stride_om,
                       TOP_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[pair, n] = silu(gate_e[n] . x_t) * (up_e[n] . x_t) for one pair, BLOCK_N columns."""
    pair = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < I
    expert = tl.load(ids_ptr + pair).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + (pair // TOP_K).to(tl.int64) * stride_xm + offs_k
    w_ptrs = w_ptr + expert * stride_we + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    acc_g = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        mk = (k0 + offs_k) < H
        x = tl.load(x_ptrs, mask=mk, other=0.0).to(tl.float32)[None, :]
        m = mask_n[:, None] & mk[None, :]
        acc_g += tl.load(w_ptrs, mask=m, other=0.0).to(tl.float32) * x
        acc_u += tl.load(w_ptrs + I * stride_wn, mask=m, other=0.0).to(tl.float32) * x
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    y = _silu_mul(tl.sum(acc_g, axis=1), tl.sum(acc_u, axis=1), x_ptr)
    tl.store(out_ptr + pair.to(tl.int64) * stride_om + offs_n, y.to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _decode_w2_kernel(act_ptr, w_ptr, ids_ptr, topw_ptr, out_ptr, H, I, stride_am, stride_we, stride_wn,
                      stride_om, TOP_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[t, n] = sum_k w[t, k] * (W2_e[n] . act[t*K + k]) for one token, BLOCK_N columns."""
    t = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < H
    offs_k = tl.arange(0, BLOCK_K)
    out = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for slot in range(TOP_K):
        pair = t * TOP_K + slot
        expert = tl.load(ids_ptr + pair).to(tl.int64)
        a_ptrs = act_ptr + pair * stride_am + offs_k
        w_ptrs = w_ptr + expert * stride_we + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, I, BLOCK_K):
            mk = (k0 + offs_k) < I
            a = tl.load(a_ptrs, mask=mk, other=0.0).to(tl.float32)[None, :]
            acc += tl.load(w_ptrs, mask=mask_n[:, None] & mk[None, :], other=0.0).to(tl.float32) * a
            a_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        y = tl.sum(acc, axis=1).to(out_ptr.dtype.element_ty).to(tl.float32)  # the expert's output, rounded
        out += y * tl.load(topw_ptr + pair)
    tl.store(out_ptr + t * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=mask_n)


def decode_block_n(rows: int, n: int, target_programs: int = 1024) -> int:
    """Output columns per decode program: 32, halved (down to 4) until the launch has about
    ``target_programs`` programs, so that a single token's GEMV still fills the GPU. The tile
    (BLOCK_N x BLOCK_K) stays 4,096 elements."""
    block = 32
    while block > 4 and rows * cdiv(n, block) < target_programs:
        block //= 2
    return block


def grouped_config(num_tokens: int, top_k: int, num_experts: int) -> dict[str, int]:
    """Tiles of the grouped path: BLOCK_M near the expected rows per expert (16..64)."""
    per_expert = num_tokens * top_k / num_experts
    block_m = 16 if per_expert <= 16 else 32 if per_expert <= 48 else 64
    return dict(BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3)


def fused_experts(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor, decode_max_tokens: int = DECODE_MAX_TOKENS,
                  config: dict[str, int] | None = None) -> torch.Tensor:
    """x [T, H], w13 [E, 2I, H], w2 [E, H, I] (contiguous, x's dtype), topk_weights fp32 [T, K],
    topk_ids int [T, K] → [T, H] in x's dtype (``FusedMoE.fused``)."""
    T, H = x.shape
    E, two_i, _ = w13.shape
    inter, top_k = two_i // 2, topk_ids.shape[1]
    assert w13.shape[2] == H and w2.shape == (E, H, inter) and w13.is_contiguous() and w2.is_contiguous()
    out = torch.empty_like(x)
    if T == 0:
        return out
    if x.stride(-1) != 1:
        x = x.contiguous()
    ids = topk_ids.to(torch.int32).contiguous()
    weights = topk_weights.float().contiguous()
    if T <= decode_max_tokens:
        act = torch.empty((T * top_k, inter), dtype=x.dtype, device=x.device)
        bn1, bn2 = decode_block_n(T * top_k, inter), decode_block_n(T, H)
        _decode_w13_kernel[(T * top_k, cdiv(inter, bn1))](
            x, w13, ids, act, inter, H, x.stride(0), w13.stride(0), w13.stride(1), act.stride(0),
            TOP_K=top_k, BLOCK_N=bn1, BLOCK_K=min(4096 // bn1, next_pow2(H)), num_warps=4)
        _decode_w2_kernel[(T, cdiv(H, bn2))](
            act, w2, ids, weights, out, H, inter, act.stride(0), w2.stride(0), w2.stride(1), out.stride(0),
            TOP_K=top_k, BLOCK_N=bn2, BLOCK_K=min(4096 // bn2, next_pow2(inter)), num_warps=4)
        return out
    cfg = config or grouped_config(T, top_k, E)
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    sorted_ids, expert_ids, num_post_pad = moe_align_block_size(ids, bm, E)
    pairs = T * top_k
    act = torch.empty((pairs, inter), dtype=x.dtype, device=x.device)
    prec = dot_precision(x.dtype)
    launch = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=min(cfg["BLOCK_K"], next_pow2(max(H, 16))), PRECISION=prec,
                  num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    grid_m = sorted_ids.numel() // bm
    _grouped_gemm_kernel[(grid_m, cdiv(inter, bn))](
        x, w13, act, weights, sorted_ids, expert_ids, num_post_pad, pairs, inter, H,
        x.stride(0), w13.stride(0), w13.stride(1), act.stride(0),
        A_DIV=top_k, GATED=True, MUL_WEIGHT=False, **launch)
    partial = torch.empty((pairs, H), dtype=x.dtype, device=x.device)
    launch["BLOCK_K"] = min(cfg["BLOCK_K"], next_pow2(max(inter, 16)))
    _grouped_gemm_kernel[(grid_m, cdiv(H, bn))](
        act, w2, partial, weights, sorted_ids, expert_ids, num_post_pad, pairs, H, inter,
        act.stride(0), w2.stride(0), w2.stride(1), partial.stride(0),
        A_DIV=1, GATED=False, MUL_WEIGHT=True, **launch)
    return torch.sum(partial.view(T, top_k, H), dim=1, out=out)
