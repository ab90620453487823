"""INT8 W8A8 in Triton: per-token activation quantization and the scaled int8 GEMM.

``quantize_int8(x)``: one program per row; the first pass finds the row's absolute maximum, the
second writes ``round(x / scale)`` (half to even, saturating at [-128, 127]) with
``scale = absmax / 127`` — or with a static per-tensor scale (one pass).

``int8_gemm(a, b, a_scale, b_scale)``: ``y[M, N] = (a[M, K] @ b[N, K]^T) * a_scale[M] * b_scale[N]
(+ bias)``: int8 operands on the tensor cores accumulate exactly in int32 tiles; the two scales and
the bias are applied in fp32 in the epilogue, which writes the output dtype. Programs are ordered in
groups of ``GROUP_M`` row tiles so neighbours share weight tiles in L2. Tiles: for decode-sized M
(<= 64) a 16/32/64-row tile with narrow column tiles (more programs to stream the weight, which
is the whole cost); above, 128 x 128 x 128 tiles. References: ``kernels/int8_utils.py``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.kernels.int8_utils import INT8_MAX, MIN_SCALE

_INT8_MAX = tl.constexpr(INT8_MAX)
_MIN_SCALE = tl.constexpr(MIN_SCALE)
#: 1.5 * 2^23: adding and subtracting it rounds an fp32 of magnitude < 2^22 to the nearest
#: integer, ties to even (torch.round's rule); libdevice.rint has no interpreter implementation
_RINT_MAGIC = tl.constexpr(12582912.0)


@triton.jit
def _round_int8(y, scale):
    v = tl.clamp(y / scale, -_INT8_MAX - 1.0, _INT8_MAX)
    return ((v + _RINT_MAGIC) - _RINT_MAGIC).to(tl.int8)


@triton.jit
def _quant_int8_kernel(x_ptr, q_ptr, s_ptr, static_ptr, K, stride_x, stride_q, STATIC: tl.constexpr,
                       BLOCK: tl.constexpr):
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_x
    q_row = q_ptr + row.to(tl.int64) * stride_q
    if STATIC:
        scale = tl.load(static_ptr)
    else:
        amax = tl.zeros((BLOCK,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK):
            offs = k0 + tl.arange(0, BLOCK)
            v = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(v))
        scale = tl.maximum(tl.max(amax, axis=0) / _INT8_MAX, _MIN_SCALE)
    tl.store(s_ptr + row, scale)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        v = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        tl.store(q_row + offs, _round_int8(v, scale), mask=offs < K)


def quantize_int8(x: torch.Tensor, input_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (unit last stride) → q int8 [M, K], scale fp32 [M, 1] (see ``quantize_int8_ref``)."""
    M, K = x.shape
    assert x.stride(1) == 1
    q = torch.empty((M, K), dtype=torch.int8, device=x.device)
    s = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    if M:
        static = input_scale is not None
        _quant_int8_kernel[(M,)](x, q, s, input_scale.float() if static else s, K, x.stride(0), q.stride(0),
                                 STATIC=static, BLOCK=min(2048, triton.next_power_of_2(K)), num_warps=4)
    return q, s


@triton.jit
def _int8_gemm_kernel(a_ptr, b_ptr, as_ptr, bs_ptr, bias_ptr, c_ptr, M, N, K, stride_am, stride_bn, stride_cm,
                      HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + offs_n[:, None].to(tl.int64) * stride_bn + offs_k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=mask_m[:, None], other=0)
            b = tl.load(b_ptrs, mask=mask_n[:, None], other=0)
        else:
            mk = (k0 + offs_k) < K
            a = tl.load(a_ptrs, mask=mask_m[:, None] & mk[None, :], other=0)
            b = tl.load(b_ptrs, mask=mask_n[:, None] & mk[None, :], other=0)
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    y = acc.to(tl.float32)
    y *= tl.load(as_ptr + offs_m, mask=mask_m, other=0.0)[:, None]
    y *= tl.load(bs_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    c = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
    tl.store(c, y.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def gemm_config(m: int, n: int, k: int) -> tuple[int, int, int, int, int]:
    """(block_m, block_n, block_k, num_warps, num_stages) for an [m, k] x [n, k]^T product."""
    if m <= 64:  # decode: stream the weight with many programs
        return max(16, triton.next_power_of_2(m)), 64 if n >= 16384 else 32, 256, 4, 4
    return 128, 128, 128, 8, 3


def int8_gemm(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
              bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
              config: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """a int8 [M, K], b int8 [N, K] (unit last strides), a_scale fp32 [M] (or [M, 1]), b_scale
    fp32 [N] → y [M, N] in ``out_dtype`` (see ``int8_gemm_ref``)."""
    M, K = a.shape
    N = b.shape[0]
    assert a.dtype == b.dtype == torch.int8 and b.shape[1] == K and a.stride(1) == 1 and b.stride(1) == 1
    y = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M == 0:
        return y
    bm, bn, bk, nw, ns = config or gemm_config(M, N, K)
    bk = min(bk, max(32, triton.next_power_of_2(K)))
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    _int8_gemm_kernel[grid](a, b, a_scale, b_scale, bias if bias is not None else b_scale, y, M, N, K,
                            a.stride(0), b.stride(0), y.stride(0), HAS_BIAS=bias is not None,
                            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, EVEN_K=K % bk == 0,
                            num_warps=nw, num_stages=ns)
    return y
