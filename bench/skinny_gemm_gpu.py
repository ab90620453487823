"""Skinny GEMM at decode batch sizes: cuBLAS (``F.linear``) vs the Triton kernel of
``kernels/gemv.py``, for the Llama-3.1-8B weight shapes at M = 1, 8, 16, 32, 64, timed inside a
CUDA graph over 8 copies of the weight in a row (so each read comes from HBM, as in a decode step
where every layer has its own weights). Reports TB/s of weight read; the engine would switch a
shape only where the kernel wins. Run on the device machine:

    PYTHONPATH=runtime python bench/skinny_gemm_gpu.py --out $OUT/skinny.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runtime"))

from pagedserve.kernels.gemv import gemv  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
COPIES = 8


def graph_us(fn) -> float:
    from triton.testing import do_bench_cudagraph

    fn()
    torch.cuda.synchronize()
    return do_bench_cudagraph(fn, rep=20) * 1e3 / COPIES


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out/skinny.json")
    ap.add_argument("--budget", type=float, default=5.0, help="seconds of configuration search per shape and M")
    args = ap.parse_args()
    grid = list(itertools.product((16, 32, 64), (128, 256), (4, 8), (3, 4)))  # block_n, block_k, warps, stages
    rows = []
    for name, (n, k) in SHAPES.items():
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(COPIES)]
        for m in (1, 8, 16, 32, 64):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = F.linear(x, ws[0]).float()
            cub = graph_us(lambda: [F.linear(x, w) for w in ws])
            best = None
            t0 = time.time()
            for bn, bk, nw, ns in grid:
                if time.time() - t0 > args.budget:
                    break
                kw = dict(block_n=bn, block_k=bk, num_warps=nw, num_stages=ns)
                try:
                    err = (gemv(x, ws[0], **kw).float() - ref).abs().max().item()
                    us = graph_us(lambda: [gemv(x, w, **kw) for w in ws])
                except Exception as e:  # noqa: BLE001 - a configuration that does not fit is skipped
                    print("skip", name, m, kw, repr(e)[:120], flush=True)
                    continue
                if best is None or us < best[0]:
                    best = (us, kw, err)
            byts = n * k * 2
            row = dict(op=name, m=m, cublas_us=cub, cublas_tbps=byts / cub / 1e6,
                       triton_us=best[0] if best else None, triton_tbps=byts / best[0] / 1e6 if best else None,
                       config=best[1] if best else None, max_err=best[2] if best else None)
            rows.append(row)
            print(f"{name:8s} M={m:3d}: cuBLAS {cub:7.1f} us {row['cublas_tbps']:.2f} TB/s | triton "
                  + (f"{best[0]:7.1f} us {row['triton_tbps']:.2f} TB/s {best[1]} err {best[2]:.1e}" if best else "-"),
                  flush=True)
        del ws
        torch.cuda.empty_cache()
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
