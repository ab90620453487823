"""Decode-attention launch sweep on the GPU: for decode shapes seen in serving (batch x context,
Llama-3.1-8B heads: 32 q / 8 KV / head_dim 128, bf16, block size 16), time the current defaults,
the earlier ones (2 programs per SM, tile 64, 4 warps, 2 stages) and a grid of split count, tile,
warps and stages inside a CUDA graph, 8 layers' caches in a row (so the K/V reads come from HBM,
not L2), as TB/s of K+V. Each shape runs in its own process (a fault cannot end the sweep).

    python -m bench.kernels.attn_tune --out $OUT/attn_tune.json [--no-grid]     (scenarios attn-tune*)
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)

from bench.kernels.targets import decode_num_splits, paged_decode_attention  # noqa: E402

LAYERS = 8
SHAPES = [(1, 1000), (8, 300), (32, 300), (64, 300), (256, 350), (400, 350), (1, 8192), (64, 8192)]


KV_DTYPE = torch.bfloat16  # --kv-dtype fp8: the caches in e4m3 (--kv-cache-dtype fp8)


def setup(batch: int, ctx: int, bs: int = 16, kvh: int = 8, d: int = 128, dt=torch.bfloat16):
    need = -(-ctx // bs)
    nb = batch * need + 1
    caches = [(torch.randn(nb, bs, kvh, d, device="cuda", dtype=dt).to(KV_DTYPE),
               torch.randn(nb, bs, kvh, d, device="cuda", dtype=dt).to(KV_DTYPE)) for _ in range(LAYERS)]
    bt = torch.randperm(nb - 1, device="cuda").to(torch.int32)[: batch * need].view(batch, need).contiguous()
    sl = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    q = torch.randn(batch, 32, d, device="cuda", dtype=dt)
    return caches, bt, sl, q


def one_shape(batch: int, ctx: int, grid_on: bool, budget: float) -> dict:
    from triton.testing import do_bench_cudagraph

    t0 = time.time()
    caches, bt, sl, q = setup(batch, ctx)
    out = torch.empty_like(q)
    byts = 2 * batch * ctx * 8 * 128 * KV_DTYPE.itemsize

    def timed(**kw) -> float:
        def run():
            for kc, vc in caches:
                paged_decode_attention(q, kc, vc, bt, sl, 0.088, out=out, **kw)
        run()
        torch.cuda.synchronize()
        return do_bench_cudagraph(run, rep=20) * 1e3 / LAYERS  # us per layer

    new_splits = decode_num_splits(batch, 8, 131072, "cuda")
    old_splits = decode_num_splits(batch, 8, 131072, "cuda", programs_per_sm=2)
    # the new defaults give the same result as the earlier configuration (checked in run 1)
    kc, vc = caches[0]
    a = paged_decode_attention(q, kc, vc, bt, sl, 0.088, num_splits=new_splits).float()
    b = paged_decode_attention(q, kc, vc, bt, sl, 0.088, num_splits=old_splits, tile_n=64, num_warps=4,
                               num_stages=2).float()
    max_diff = float((a - b).abs().max())
    new = timed(num_splits=new_splits)
    old = timed(num_splits=old_splits, tile_n=64, num_warps=4, num_stages=2)
    rows = []
    grid = list(itertools.product((1, 2, 4, 8, 16), (32, 64), (2, 4), (2, 3))) if grid_on else []
    for splits, tile, warps, stages in grid:
        if time.time() - t0 > budget:
            break
        if splits > 1 and splits * 64 > ctx * 2:
            continue
        us = timed(num_splits=splits, tile_n=tile, num_warps=warps, num_stages=stages)
        rows.append(dict(splits=splits, tile=tile, warps=warps, stages=stages, us=us))
    rows.sort(key=lambda r: r["us"])
    return dict(batch=batch, ctx=ctx, max_diff_new_vs_old=max_diff, new_splits=new_splits, new_us=new, new_tbps=byts / new / 1e6,
                old_splits=old_splits, old_us=old, old_tbps=byts / old / 1e6,
                best=rows[0] if rows else None, best_tbps=byts / rows[0]["us"] / 1e6 if rows else None, top=rows[:8])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out/attn_tune.json")
    ap.add_argument("--budget", type=float, default=12.0, help="seconds of grid search per shape")
    ap.add_argument("--no-grid", action="store_true", help="only the current and the earlier defaults")
    ap.add_argument("--shape", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--shapes", nargs="*", default=None, help="batch,ctx pairs (default: the built-in list)")
    ap.add_argument("--kv-dtype", choices=["bf16", "fp8"], default="bf16")
    args = ap.parse_args()
    global KV_DTYPE
    KV_DTYPE = torch.float8_e4m3fn if args.kv_dtype == "fp8" else torch.bfloat16
    shapes = [tuple(int(v) for v in x.split(",")) for x in args.shapes] if args.shapes else SHAPES
    if args.shape:
        print("RESULT " + json.dumps(one_shape(*args.shape, not args.no_grid, args.budget)), flush=True)
        return 0
    res = []
    for batch, ctx in shapes:
        cmd = [sys.executable, "-m", "bench.kernels.attn_tune", "--shape", str(batch), str(ctx), "--budget", str(args.budget),
               "--kv-dtype", args.kv_dtype]
        cmd += ["--no-grid"] if args.no_grid else []
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            print(f"B={batch} ctx={ctx}: FAILED rc={p.returncode} {p.stderr[-400:]}", flush=True)
            res.append(dict(batch=batch, ctx=ctx, error=p.stderr[-2000:]))
            continue
        e = json.loads(lines[-1][7:])
        res.append(e)
        print(f"B={batch} ctx={ctx}: new ({e['new_splits']} splits) {e['new_us']:.1f} us = {e['new_tbps']:.2f} TB/s; "
              f"old ({e['old_splits']} splits) {e['old_us']:.1f} us = {e['old_tbps']:.2f} TB/s; "
              f"max |new - old| {e['max_diff_new_vs_old']:.2e}; best {e['best']}",
              flush=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
