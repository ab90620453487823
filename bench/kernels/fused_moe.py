"""The fused MoE kernel (``kernels/fused_moe.py``) at the Mixtral-8x7B and Qwen3-30B-A3B layer shapes:
checked against the torch reference, timed eagerly and replayed from a CUDA graph (the engine runs
it inside decode / piecewise graphs, so the token sort must be capturable), with the bandwidth of
the expert weights it touches; ``--sweep`` also times grouped-path tiles.

    PYTHONPATH=runtime python -m bench.kernels.fused_moe --out $OUT/fused_moe.json [--sweep]
    PYTHONPATH=runtime python -m bench.kernels.fused_moe --cpu-smoke      # interpreter, tiny shapes
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

if "--cpu-smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "runtime"))
from pagedserve.kernels.fused_moe import fused_experts, grouped_config  # noqa: E402
from pagedserve.kernels.fused_moe_ref import fused_experts_ref, select_experts  # noqa: E402

#: name → (experts, top_k, hidden, expert intermediate)
SHAPES = {"mixtral-8x7b": (8, 2, 4096, 14336), "qwen3-30b-a3b": (128, 8, 2048, 768)}
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)
SWEEP = [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=64, num_warps=w, num_stages=3)
         for bm in (16, 32, 64, 128) for bn in (64, 128) for w in (4, 8)]
SWEEP_TOKENS = (16, 256, 4096)  # the tile sweep's sizes (each config compiles once per shape)


def _time(fn, reps: int) -> float:
    """Median milliseconds over ``reps`` runs (CUDA events)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def _graph_time(fn, reps: int) -> float | None:
    """Median milliseconds of a CUDA-graph replay of ``fn`` (None if capture fails)."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
    except Exception as e:  # report, keep going
        print(f"  graph capture failed: {type(e).__name__}: {e}", flush=True)
        return None
    return _time(g.replay, reps)


def run(args: argparse.Namespace) -> list[dict]:
    cpu = args.cpu_smoke
    dev, dtype = ("cpu", torch.float32) if cpu else ("cuda", torch.bfloat16)
    shapes = {"tiny": (8, 2, 64, 96)} if cpu else SHAPES
    tokens = (1, 5, 40) if cpu else TOKENS
    rows, t_end = [], time.time() + args.budget
    for name, (E, K, H, inter) in shapes.items():
        g = torch.Generator(device=dev).manual_seed(0)
        w13 = (torch.randn(E, 2 * inter, H, device=dev, generator=g) * H ** -0.5).to(dtype)
        w2 = (torch.randn(E, H, inter, device=dev, generator=g) * inter ** -0.5).to(dtype)
        expert_bytes = (w13[0].numel() + w2[0].numel()) * w13.element_size()
        for T in tokens:
            if time.time() > t_end:
                print("budget spent", flush=True)
                return rows
            x = torch.randn(T, H, device=dev, generator=g).to(dtype)
            weights, ids = select_experts(torch.randn(T, E, device=dev, generator=g), K, True)
            out = fused_experts(x, w13, w2, weights, ids)
            ref = fused_experts_ref(x.float(), w13.float(), w2.float(), weights, ids)
            err = ((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
            row = dict(shape=name, tokens=T, rel_err=err, ok=err < (1e-4 if dtype == torch.float32 else 3e-2),
                       active_experts=int(torch.unique(ids).numel()))
            if not cpu:
                fn = lambda: fused_experts(x, w13, w2, weights, ids)  # noqa: E731
                row["eager_ms"] = _time(fn, args.reps)
                row["graph_ms"] = _graph_time(fn, args.reps)
                best = row["graph_ms"] or row["eager_ms"]
                row["weight_GBps"] = row["active_experts"] * expert_bytes / (best * 1e-3) / 1e9
                row["tflops"] = 2 * T * K * 3 * H * inter / (best * 1e-3) / 1e12
                if T >= 8 and T <= 1024:
                    row["torch_ref_ms"] = _time(lambda: fused_experts_ref(x, w13, w2, weights, ids), 3)
                if args.sweep and T in SWEEP_TOKENS and time.time() < t_end:
                    default = grouped_config(T, K, E)
                    res = []
                    for cfg in SWEEP:
                        try:
                            ms = _time(lambda: fused_experts(x, w13, w2, weights, ids, decode_max_tokens=0,
                                                             config=cfg), 5)
                        except Exception:  # out of resources for this tile
                            continue
                        res.append((ms, cfg))
                    res.sort(key=lambda r: r[0])
                    row["sweep_best"] = [dict(ms=ms, **cfg) for ms, cfg in res[:3]]
                    row["sweep_default_ms"] = _time(lambda: fused_experts(x, w13, w2, weights, ids, decode_max_tokens=0,
                                                                          config=default), 5)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="time grouped-path tiles at each size")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--budget", type=float, default=400.0, help="seconds")
    args = ap.parse_args()
    rows = run(args)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=2)
    ok = all(r["ok"] for r in rows)
    print("FUSED MOE:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
