"""INT8 W8A8 linear layers at the Llama-3.1-8B shapes: the int8 path (``kernels/int8_gemm.py``:
per-token int8 quantization + the scaled int8 GEMM at its default tiles) against bf16 cuBLAS and
the fp8 path (per-token fp8 quantization + the skinny GEMV for M <= 64, ``torch._scaled_mm``
above), plus a tile search of the int8 GEMM. Each case is timed inside a CUDA graph over 8 copies
of the weight (every read from HBM, as in a step). Skinny M reports TB/s of weight read and the
time against the int8 weight-read floor; large M reports TFLOP/s. Run on the device machine:

    PYTHONPATH=runtime python -m bench.kernels.gemm_int8 --out $OUT/gemm_int8.json
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

from bench.kernels.gemm import COPIES, SHAPES, graph_us  # noqa: E402

#: (block_m is set from M) block_n, block_k, num_warps, num_stages
GRID = [(32, 256, 4, 4), (64, 256, 4, 4), (16, 256, 4, 4), (32, 512, 4, 3), (64, 128, 4, 6), (32, 256, 4, 6),
        (64, 256, 8, 4), (128, 128, 8, 4), (16, 512, 4, 4), (128, 256, 8, 3)]
LARGE_GRID = [(128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (64, 128, 128, 4, 4), (128, 128, 64, 4, 4),
              (256, 128, 128, 8, 3), (128, 256, 64, 8, 4)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", type=int, nargs="+", default=[1, 16, 32, 64, 512, 4096])
    ap.add_argument("--budget", type=float, default=30.0, help="seconds of tile search per (shape, M)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gemm_int8: needs a GPU")
    from pagedserve.kernels.int8_gemm import gemm_config, int8_gemm, quantize_int8
    from pagedserve.kernels.int8_utils import int8_gemm_ref
    from pagedserve.layers.fp8 import fp8_linear, quantize_weight
    from pagedserve.layers.int8 import int8_linear, quantize_weight_int8

    dev, rows = "cuda", []
    bw = None
    try:
        x = torch.empty(1 << 28, dtype=torch.uint8, device=dev)
        ms = graph_us(lambda: x.clone()) * COPIES / 1e3
        bw = 2 * x.numel() / (ms * 1e-3) / 1e12  # read + write, TB/s
        del x
    except Exception as e:  # noqa: BLE001
        print("bandwidth probe failed:", e)
    for name, (n, k) in SHAPES.items():
        g = torch.Generator(device=dev).manual_seed(n + k)
        w = torch.randn(n, k, device=dev, generator=g, dtype=torch.bfloat16) * 0.02
        wq = [quantize_weight_int8(w) for _ in range(COPIES)]
        w8 = [quantize_weight(w) for _ in range(COPIES)]
        wb = [w.clone() for _ in range(COPIES)]
        for m in args.ms:
            xb = torch.randn(m, k, device=dev, generator=g, dtype=torch.bfloat16)
            row = {"shape": name, "n": n, "k": k, "m": m, "default_tiles": gemm_config(m, n, k)}
            row["bf16_us"] = graph_us(lambda: [F.linear(xb, wi) for wi in wb])
            row["fp8_us"] = graph_us(lambda: [fp8_linear(xb, q, s, None) for q, s in w8])
            row["int8_us"] = graph_us(lambda: [int8_linear(xb, q, s, None) for q, s in wq])
            ref = F.linear(xb.float(), wq[0][0].float() * wq[0][1][:, None])
            got = int8_linear(xb, *wq[0], None).float()
            row["int8_rel_err_vs_dequant"] = float((got - ref).norm() / ref.norm())
            qa, sa = quantize_int8(xb)
            exact = int8_gemm_ref(qa, wq[0][0], sa, wq[0][1], None, torch.float32)
            best, t0 = None, time.time()
            grid = [(max(16, 1 << (m - 1).bit_length()), *c) for c in GRID] if m <= 64 else LARGE_GRID
            for cfg in grid:
                if time.time() - t0 > args.budget:
                    break
                try:
                    out = int8_gemm(qa, wq[0][0], sa, wq[0][1], None, torch.float32, config=cfg)
                    if not torch.allclose(out, exact, rtol=1e-4, atol=1e-4):
                        continue
                    us = graph_us(lambda: [int8_gemm(qa, q, sa, s, None, torch.bfloat16, config=cfg) for q, s in wq])
                except Exception:  # noqa: BLE001  (out of resources)
                    continue
                if best is None or us < best[0]:
                    best = (us, cfg)
            if best:
                row["int8_gemm_best_us"], row["int8_gemm_best_tiles"] = best
            if m <= 64:
                row["int8_weight_tbps"] = n * k / (row["int8_us"] * 1e-6) / 1e12
                if bw:
                    row["int8_floor_us"] = n * k / (bw * 1e12) * 1e6
            else:
                row["int8_tflops"] = 2 * m * n * k / (row["int8_us"] * 1e-6) / 1e12
                row["bf16_tflops"] = 2 * m * n * k / (row["bf16_us"] * 1e-6) / 1e12
            print(json.dumps(row))
            rows.append(row)
    with open(args.out, "w") as fh:
        json.dump({"device": torch.cuda.get_device_name(), "copy_tbps": bw, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
