"""Skinny matrix product for decode: ``y[M, N] = x[M, K] @ w[N, K]^T (+ bias)`` for M <= 64.

At decode batch sizes a linear layer is a weight read; this kernel streams each weight row once.
Grid ``(cdiv(N, BLOCK_N),)``: a program owns ``BLOCK_N`` output features, walks K in ``BLOCK_K``
steps (pipelined loads), multiplies the zero-padded ``[BLOCK_M, BLOCK_K]`` activation tile
(BLOCK_M = 16, 32 or 64: the smallest that holds M) with the ``[BLOCK_N, BLOCK_K]`` weight tile on
the tensor cores and accumulates in fp32. No split-K: one launch, deterministic. Not used by the
engine yet: cuBLAS reached 3.0 TB/s on the qkv / o shapes at M=32 on the H200 (RESULTS.md run 8)
and ``bench/skinny_gemm_gpu.py`` measures whether this beats it inside a graph. Reference:
``torch.nn.functional.linear``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

MAX_M = 64


def linear_ref(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, w, bias)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                 HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    mask_m = offs_m < M
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            w = tl.load(w_ptrs, mask=mask_n[:, None], other=0.0)
            x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
        else:
            mk = (k0 + offs_k) < K
            w = tl.load(w_ptrs, mask=mask_n[:, None] & mk[None, :], other=0.0)
            x = tl.load(x_ptrs, mask=mask_m[:, None] & mk[None, :], other=0.0)
        acc += tl.dot(x, tl.trans(w))
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def gemv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *, block_n: int = 16,
         block_k: int = 512, num_warps: int = 4, num_stages: int = 4) -> torch.Tensor:
    """x: [M, K] (M <= 64, unit last stride), w: [N, K] contiguous → y [M, N] in x's dtype."""
    M, K = x.shape
    N = w.shape[0]
    assert M <= MAX_M and w.shape[1] == K and w.stride(1) == 1 and x.stride(1) == 1
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return y
    block_k = min(block_k, triton.next_power_of_2(K))
    _gemv_kernel[(triton.cdiv(N, block_n),)](
        x, w, bias if bias is not None else w, y, M, N, K, x.stride(0), w.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=max(16, triton.next_power_of_2(M)), BLOCK_N=block_n,
        BLOCK_K=block_k, EVEN_K=K % block_k == 0, num_warps=num_warps, num_stages=num_stages)
    return y
