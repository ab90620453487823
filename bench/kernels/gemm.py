"""Linear-layer GEMMs for the Llama-3.1-8B shapes: bf16 cuBLAS vs the Triton skinny kernel
(``kernels/gemv.py``, bf16, and fp8 x fp8 after the per-token activation quantization of
``kernels/quant_fp8.py``) vs fp8 ``torch._scaled_mm`` after the same quantization. Each case is timed inside a CUDA graph over 8 copies of
the weight in a row, so every read comes from HBM as in a step where each layer has its own
weights. Skinny M (decode) reports TB/s of weight read; large M (prefill) reports TFLOP/s.
Run on the device machine:

    python -m bench.kernels.gemm --out $OUT/gemm.json     (scenarios gemm, gemm-fp8-tiles)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repository root

from bench.kernels.targets import gemv, quantize_per_token, quantize_per_token_ref  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
COPIES = 8
GRID = [(64, 256, 4, 4), (16, 256, 4, 4), (16, 512, 4, 3), (32, 128, 4, 4), (32, 256, 4, 4), (32, 256, 4, 6),
        (32, 512, 4, 3), (32, 512, 8, 3), (64, 128, 4, 4), (64, 256, 8, 4), (64, 128, 4, 6), (128, 128, 8, 4),
        (128, 256, 8, 4), (32, 1024, 8, 3), (64, 512, 4, 3), (64, 512, 8, 3), (128, 512, 8, 3),
        # deeper pipelines and more programs for the N = 4,096 / 6,144 shapes (run 30)
        (16, 512, 4, 4), (16, 1024, 4, 3), (32, 256, 4, 8), (32, 512, 4, 4), (32, 1024, 4, 3), (64, 256, 4, 6),
        (16, 256, 2, 6), (32, 512, 2, 4),
        # around run 30's best (64, 256, 4, 6) (run 31)
        (64, 256, 4, 8), (64, 128, 4, 8), (64, 256, 4, 7), (128, 128, 8, 6), (128, 128, 4, 6), (64, 256, 8, 6)]


def graph_us(fn) -> float:
    from triton.testing import do_bench_cudagraph

    fn()
    torch.cuda.synchronize()
    return do_bench_cudagraph(fn, rep=20) * 1e3 / COPIES


def fp8_mm(x: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
    q, s = quantize_per_token(x)
    return torch._scaled_mm(q, wq.t(), scale_a=s, scale_b=ws.view(1, -1), out_dtype=torch.bfloat16)


def fp8_gemv(x: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, **kw) -> torch.Tensor:
    q, s = quantize_per_token(x)
    return gemv(q, wq, x_scale=s.view(-1), w_scale=ws, out_dtype=torch.bfloat16, **kw)


def best_triton(x, ws, scales, ref, budget):
    """(µs, tile kwargs, max error, the five fastest [µs, kwargs]) of the grid within ``budget`` s."""
    best, t0, seen = None, time.time(), []
    for bn, bk, nw, ns in GRID:
        if time.time() - t0 > budget:
            break
        kw = dict(block_n=bn, block_k=bk, num_warps=nw, num_stages=ns)
        try:
            if scales:
                err = (fp8_gemv(x, ws[0], scales[0], **kw).float() - ref).abs().max().item()
                us = graph_us(lambda: [fp8_gemv(x, w, s, **kw) for w, s in zip(ws, scales)])
            else:
                err = (gemv(x, ws[0], **kw).float() - ref).abs().max().item()
                us = graph_us(lambda: [gemv(x, w, **kw) for w in ws])
        except Exception as e:  # noqa: BLE001 - a configuration that does not fit is skipped
            print("skip", x.shape, kw, repr(e)[:120], flush=True)
            continue
        seen.append((us, kw))
        if best is None or us < best[0]:
            best = (us, kw, err)
    return (*best, sorted(seen, key=lambda r: r[0])[:5]) if best else best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out/gemm.json")
    ap.add_argument("--budget", type=float, default=6.0, help="seconds of configuration search per case")
    ap.add_argument("--skinny", type=int, nargs="*", default=[1, 16, 32, 40, 64])
    ap.add_argument("--no-bf16-search", action="store_true", help="skip the bf16 Triton configuration search")
    ap.add_argument("--large", type=int, nargs="*", default=[128, 288, 1024, 4096, 16384])
    args = ap.parse_args()
    rows = []
    for name, (n, k) in SHAPES.items():
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(COPIES)]
        qs = [quantize_per_token_ref(w) for w in ws]
        wq, wsc = [q for q, _ in qs], [s.view(-1).contiguous() for _, s in qs]
        for m in args.skinny:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = F.linear(x, ws[0]).float()
            cub = graph_us(lambda: [F.linear(x, w) for w in ws])
            b16 = (float("nan"), None, 0.0) if args.no_bf16_search else best_triton(x, ws, None, ref, args.budget)
            b8 = best_triton(x, wq, wsc, ref, args.budget)
            sm = graph_us(lambda: [fp8_mm(x, w, s) for w, s in zip(wq, wsc)])
            sm_err = (fp8_mm(x, wq[0], wsc[0]).float() - ref).abs().max().item()
            row = dict(op=name, m=m, cublas_us=cub, triton_bf16=b16, quant_triton_fp8=b8, scaled_mm_us=sm,
                       scaled_mm_err=sm_err, ref_absmax=ref.abs().max().item())
            rows.append(row)
            mb = n * k * 2 / 1e6
            print(f"{name:8s} M={m:3d}: cuBLAS {cub:6.1f} us {mb / cub:.2f} TB/s | triton bf16 {b16[0]:6.1f} us "
                  f"{mb / b16[0]:.2f} TB/s {b16[1]} | quant+triton fp8 {b8[0]:6.1f} us {b8[1]} err {b8[2]:.1e} | "
                  f"quant+scaled_mm {sm:6.1f} us err {sm_err:.1e}", flush=True)
        for m in args.large:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            cub = graph_us(lambda: [F.linear(x, w) for w in ws])
            sm = graph_us(lambda: [fp8_mm(x, w, s) for w, s in zip(wq, wsc)])
            q, s = quantize_per_token(x)
            qt = graph_us(lambda: [quantize_per_token(x) for _ in range(COPIES)])
            tf = 2 * m * n * k / 1e6
            rows.append(dict(op=name, m=m, cublas_us=cub, scaled_mm_us=sm, quant_us=qt))
            print(f"{name:8s} M={m:5d}: cuBLAS {cub:8.1f} us {tf / cub:.0f} TFLOP/s | quant+scaled_mm {sm:8.1f} us "
                  f"{tf / sm:.0f} TFLOP/s (quant alone {qt:.1f} us)", flush=True)
        del ws, wq, qs
        torch.cuda.empty_cache()
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
