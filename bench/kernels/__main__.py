"""Check and time pagedserve's Triton kernels on the GPU: ``python -m bench.kernels``.

    python -m bench.kernels --out $OUT/kernels.json [--quick] [--sections decode,prefill]

Each kernel has its module here (``rmsnorm``, ``rotary``, ``activation``, ``kv_store``,
``decode_attention``, ``prefill_attention``), with sections that (a) check the kernel against its
torch reference at real sizes (Llama-3.1-8B: 32 q heads / 8 KV heads / head_dim 128; SmolLM2:
9 / 3 / 64; bf16 and fp16; block sizes 16 and 32) and (b) time it with ``triton.testing.do_bench``
(median, L2 flushed): decode attention as GB/s of K+V read against the measured copy bandwidth,
prefill attention as TFLOP/s, the torch reference and dense torch SDPA alongside. Every case is
isolated: a failure is recorded and the run goes on (after a sticky CUDA error the process
re-executes itself and resumes at the next section). A global budget (``--budget``) skips what does
not fit. Results: a table on stdout and everything as JSON in ``--out``. The tuning tools
``attn_tune`` and ``gemm`` are separate modules (``python -m bench.kernels.attn_tune``, ``.gemm``).

``--cpu-smoke`` (development only): tiny shapes through the Triton interpreter on CPU, to test the
benchmark's own logic without a GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

if "--cpu-smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402

from bench.kernels import (activation, decode_attention, harness, kv_store, prefill_attention, rmsnorm,  # noqa: E402
                           rotary, window_attention)
from bench.kernels.harness import CudaDead, Run, copy_tbps  # noqa: E402

#: every section, in the order of a full run
SECTION_FNS = {**harness.SECTIONS, **kv_store.SECTIONS, "decode": decode_attention.SECTIONS["decode"],
               "prefill": prefill_attention.SECTIONS["prefill"], "graph": decode_attention.SECTIONS["graph"],
               "window": window_attention.SECTIONS["window"],
               **rmsnorm.SECTIONS, **rotary.SECTIONS, **activation.SECTIONS,
               "decode_sweep": decode_attention.SECTIONS["decode_sweep"],
               "prefill_sweep": prefill_attention.SECTIONS["prefill_sweep"]}
#: names of several sections (the sections of the earlier one-file script)
ALIASES = {"fused": ["rmsnorm", "rotary", "silu_and_mul"], "sweep": ["decode_sweep", "prefill_sweep"],
           "attention": ["decode", "prefill", "graph", "window"]}


def sections(spec: str) -> list[str]:
    out: list[str] = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        if name not in SECTION_FNS and name not in ALIASES:
            raise ValueError(f"--sections: unknown section {name!r}; choose from "
                             f"{', '.join(list(SECTION_FNS) + list(ALIASES))}")
        out += [n for n in ALIASES.get(name, [name]) if n not in out]
    return out


def summary(r: Run) -> None:
    res = r.res
    checks = res["checks"]
    n_fail = sum(not c["passed"] for c in checks)
    print("\n" + "=" * 110)
    env = res.get("env", {})
    print(f"pagedserve kernels on {env.get('gpu', 'cpu')} | torch {env.get('torch')} triton {env.get('triton')} | "
          f"copy {copy_tbps(r):.2f} TB/s | {r.elapsed():.0f}s")
    print(f"checks: {len(checks) - n_fail}/{len(checks)} passed, errors: {len(res['errors'])}, "
          f"skipped: {len(res['skipped'])}")
    for c in checks:
        if not c["passed"]:
            print(f"  FAIL {c['kernel']:<16} {c['case']:<55} err={c['max_abs_err']:.3g} tol={c['tol']:.3g}"
                  f"{' NaN' if c['nan'] else ''}")
    for e in res["errors"]:
        print(f"  ERROR {e['where']}: {e['error'][:160]}")

    def f(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) and v is not None and not (
            isinstance(v, float) and math.isnan(v)) else "-"

    dec = [t for t in res["timings"] if t["kernel"] == "decode"]
    if dec:
        print(f"\n{'decode attention':<52} {'splits':>6} {'eager us':>9} {'graph us':>9} {'GB/s':>7} "
              f"{'%copy':>6} {'ref us':>9} {'sdpa us':>9}")
        for t in dec:
            print(f"{t['case'][:52]:<52} {f(t.get('splits'), 'd'):>6} {f(t['triton_ms'] * 1e3, '.1f'):>9} "
                  f"{f((t.get('triton_graph_ms') or float('nan')) * 1e3, '.1f'):>9} {f(t['GBps'], '.0f'):>7} "
                  f"{f(t['pct_copy_bw'], '.1f'):>6} {f((t.get('torch_ref_ms') or float('nan')) * 1e3, '.0f'):>9} "
                  f"{f((t.get('torch_sdpa_dense_ms') or float('nan')) * 1e3, '.1f'):>9}")
    pre = [t for t in res["timings"] if t["kernel"] == "prefill"]
    if pre:
        print(f"\n{'prefill attention':<52} {'us':>9} {'TFLOP/s':>8} {'ref us':>9} {'sdpa us':>9} {'sdpa TF':>8}")
        for t in pre:
            print(f"{t['case'][:52]:<52} {f(t['triton_ms'] * 1e3, '.0f'):>9} {f(t['TFLOPs'], '.1f'):>8} "
                  f"{f((t.get('torch_ref_ms') or float('nan')) * 1e3, '.0f'):>9} "
                  f"{f((t.get('torch_sdpa_dense_ms') or float('nan')) * 1e3, '.0f'):>9} "
                  f"{f(t.get('torch_sdpa_dense_TFLOPs', float('nan')), '.1f'):>8}")
    other = [t for t in res["timings"] if t["kernel"] not in ("decode", "prefill")]
    if other:
        print(f"\n{'fused ops / kv store':<52} {'triton us':>9} {'torch us':>9} {'speedup':>8} {'GB/s':>7}")
        for t in other:
            tr = t.get("triton_ms", t.get("replay_ms"))
            print(f"{(t['kernel'] + ' ' + t['case'])[:52]:<52} {f(tr * 1e3 if tr else None, '.1f'):>9} "
                  f"{f((t.get('torch_ms') or float('nan')) * 1e3, '.1f'):>9} {f(t.get('speedup'), '.2f'):>8} "
                  f"{f(t.get('GBps'), '.0f'):>7}")
    for s in res["sweeps"]:
        print(f"\nsweep {s['kind']} {s['case']}: best={s.get('best')} rule={s.get('rule')}")
        for k, v in s["results"].items():
            print(f"   {str(k):<16} " + " ".join(f"{kk}={f(vv, '.4g') if not isinstance(vv, str) else vv}"
                                                 for kk, vv in v.items()))
    print("=" * 110)
    print(f"RESULT: {'PASS' if n_fail == 0 and not res['errors'] else 'FAIL'} "
          f"({n_fail} failed checks, {len(res['errors'])} errors) -> {r.args.out}")


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/out/kernels.json")
    ap.add_argument("--quick", action="store_true", help="a small subset (about a minute)")
    ap.add_argument("--budget", type=float, default=200.0, help="wall-clock budget in seconds (from start)")
    ap.add_argument("--sections", default=",".join(SECTION_FNS),
                    help="comma-separated subset of " + ",".join(list(SECTION_FNS) + list(ALIASES)))
    ap.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    try:
        wanted = sections(args.sections)
    except ValueError as e:
        ap.error(str(e))
    r = Run(args)
    if not r.cpu and not torch.cuda.is_available():
        print("no CUDA device (use --cpu-smoke for a logic-only interpreter run)", file=sys.stderr)
        return 2
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            r.res = json.load(f)
        print(f"resuming after a dead CUDA context; done: {r.res['sections_done']}", flush=True)
    torch.manual_seed(0)
    for name in wanted:
        if name in r.res["sections_done"]:
            continue
        print(f"\n== {name} ({r.elapsed():.0f}s elapsed, {r.left():.0f}s left)", flush=True)
        try:
            SECTION_FNS[name](r)
        except CudaDead as e:
            r.res["sections_done"].append(name)
            r.res["errors"].append(dict(where=f"section {name}", error=f"CUDA context lost at {e}; re-executing"))
            r.save()
            if r.left() > 20:
                argv = [sys.executable, "-m", "bench.kernels"] + [a for a in sys.argv[1:] if a != "--resume"]
                os.execv(sys.executable, argv + ["--resume"])
            break
        except Exception as e:  # noqa: BLE001
            r.error(f"section {name}", e)
        r.res["sections_done"].append(name)
        r.save()
    summary(r)
    r.save()
    n_fail = sum(not c["passed"] for c in r.res["checks"])
    return 0 if n_fail == 0 and not r.res["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
