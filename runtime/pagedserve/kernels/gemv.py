"""Skinny matrix product for decode: ``y[M, N] = x[M, K] @ w[N, K]^T (+ bias)``, M <= 64.

At decode batch sizes a linear layer is a weight read; this kernel streams each weight row once.
Grid ``(cdiv(N, BLOCK_N),)``: a program owns ``BLOCK_N`` output features and walks K in
``BLOCK_K`` steps (pipelined loads). The product is computed transposed, ``w_tile @ x_tile^T``, so
the weight tile is the tensor-core operand with the long side and the batch (padded to
BLOCK_M = 16, 32 or 64) the short one; it accumulates in fp32 (fp32 operands multiply in full
precision, not TF32). No split-K: one launch, deterministic.

Operands are both 16-bit, or both fp8 (e4m3) with scales: ``y = (xq @ wq^T) * x_scale[M] *
w_scale[N]`` (per-token activation and per-channel weight scales, ``layers/fp8.py``): the tensor
cores take fp8 directly and the weight read is half the bf16 one. (Weight-only fp8, widening the
weight tile in registers, measured slower than bf16 on the H200: RESULTS.md run 20.)
Reference: ``linear_ref``, torch on the dequantized operands.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from pagedserve.kernels.utils import dot_precision

MAX_M = 64  # layers/fp8.GEMV_MAX_M


def linear_ref(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
               x_scale: torch.Tensor | None = None, w_scale: torch.Tensor | None = None,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    if w_scale is None:
        return F.linear(x, w, bias)
    y = F.linear(x.float(), w.float()) * x_scale.float().view(-1, 1) * w_scale.float().view(1, -1)
    return (y + bias.float() if bias is not None else y).to(out_dtype)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, xs_ptr, ws_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                 HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                 PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    mask_m = offs_m < M
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            w = tl.load(w_ptrs, mask=mask_n[:, None], other=0.0)
            x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
        else:
            mk = (k0 + offs_k) < K
            w = tl.load(w_ptrs, mask=mask_n[:, None] & mk[None, :], other=0.0)
            x = tl.load(x_ptrs, mask=mask_m[:, None] & mk[None, :], other=0.0)
        acc += tl.dot(w, tl.trans(x), input_precision=PRECISION)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if HAS_SCALE:
        acc *= tl.load(ws_ptr + offs_n, mask=mask_n, other=0.0)[:, None]
        acc *= tl.load(xs_ptr + offs_m, mask=mask_m, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
    y = y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask_m[None, :] & mask_n[:, None])


def gemv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *,
         x_scale: torch.Tensor | None = None, w_scale: torch.Tensor | None = None,
         out_dtype: torch.dtype | None = None, block_n: int = 32, block_k: int = 256,
         num_warps: int = 4, num_stages: int = 4) -> torch.Tensor:
    """x: [M, K] (M <= 64, unit last stride), w: [N, K] contiguous → y [M, N] (x's dtype, or
    ``out_dtype`` for fp8 operands, which need fp32 ``x_scale`` [M] and ``w_scale`` [N])."""
    M, K = x.shape
    N = w.shape[0]
    assert M <= MAX_M and w.shape[1] == K and w.stride(1) == 1 and x.stride(1) == 1
    fp8 = x.element_size() == 1
    assert w.dtype == x.dtype, f"operand dtypes differ: {x.dtype} vs {w.dtype}"
    assert fp8 == (x_scale is not None and w_scale is not None and out_dtype is not None), \
        "fp8 operands need x_scale, w_scale and out_dtype"
    y = torch.empty((M, N), dtype=out_dtype or x.dtype, device=x.device)
    if M == 0:
        return y
    block_k = min(block_k, triton.next_power_of_2(K))
    _gemv_kernel[(triton.cdiv(N, block_n),)](
        x, w, x_scale if fp8 else w, w_scale if fp8 else w, bias if bias is not None else w, y, M, N, K,
        x.stride(0), w.stride(0), y.stride(0), HAS_SCALE=fp8, HAS_BIAS=bias is not None,
        BLOCK_M=max(16, triton.next_power_of_2(M)), BLOCK_N=block_n, BLOCK_K=block_k,
        EVEN_K=K % block_k == 0, PRECISION=dot_precision(x.dtype),
        num_warps=num_warps, num_stages=num_stages)
    return y
