"""Turn scenario JSONs (``python -m bench --out DIR``) into a ``bench/RESULTS.md`` entry.

    python bench/report.py DIR_OR_JSON [...] [--title "what changed"]

Prints a heading (date, hardware, the command) and a table with one row per scenario: its key
figures, the commit and the date. Paste it at the end of RESULTS.md and add what the numbers mean.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys


def _f(v, spec: str = ",.0f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def _throughput(d: dict) -> str:
    runs = d.get("output_tok_s_each_run") or [d.get("output_tok_s")]
    s = f"{d.get('num_prompts')} {d.get('dataset')}: **{' / '.join(_f(r) for r in runs)}** output tok/s"
    if d.get("hf"):
        s += f", {_f(d.get('speedup_vs_best_hf'), '.1f')}x HF static batching"
    return s + f", ready in {_f(d.get('startup_s'), '.1f')} s"


def _latency(d: dict) -> str:
    rows = "; ".join(f"batch {r['batch_size']}: TTFT {_f(r['ttft_ms'], '.2f')} ms, TPOT {_f(r['tpot_ms'], '.3f')} ms"
                     for r in d.get("runs", []))
    floor = d.get("weight_read_floor_ms")
    return rows + (f" (floor {_f(floor, '.2f')} ms)" if floor else "")


def _serve(d: dict) -> str:
    return (f"{d.get('request_rate')} req/s: TTFT p50 **{_f(d.get('median_ttft_ms'), '.1f')}** / p99 "
            f"{_f(d.get('p99_ttft_ms'), '.1f')} ms, TPOT p50 **{_f(d.get('median_tpot_ms'), '.2f')}** / p99 "
            f"{_f(d.get('p99_tpot_ms'), '.2f')} ms, ITL p50 {_f(d.get('median_itl_ms'), '.2f')} ms, "
            f"**{_f(d.get('output_throughput'))}** output tok/s, {d.get('failed', '-')} failed")


def _engine_check(rows: list) -> str:
    f32 = [r for r in rows if r.get("dtype") == "float32"]
    same = sum(bool(r.get("identical")) for r in f32)
    return f"float32 identical {same}/{len(f32)}: **{'PASS' if f32 and same == len(f32) else 'FAIL'}**"


def _kernels(d: dict) -> str:
    checks = d.get("checks", [])
    bad = sum(not c.get("passed") for c in checks)
    return f"checks {len(checks) - bad}/{len(checks)} passed, {len(d.get('errors', []))} errors"


def _sweep(d: dict) -> str:
    ms = {int(k[6:-9]): v for k, v in d.items() if k.startswith("decode") and k.endswith("_sweep_ms")}
    return ("decode step " + " / ".join(_f(ms[b], ".2f") for b in sorted(ms))
            + f" ms at batch {' / '.join(str(b) for b in sorted(ms))}") if ms else "-"


def _profiles(d: dict) -> str:
    keys = (("mixed32p256_gpu_ms", "mixed step"), ("decode38_gpu_ms", "batch-38 decode"),
            ("prefill16k_gpu_ms", "16k prefill"), ("decode400_ms", "batch-400 decode (wall)"))
    return ", ".join(f"{label} {_f(d[k], '.2f')} ms" for k, label in keys if k in d) + " (GPU time)"


def _startup(d: dict) -> str:
    def phases(run: dict) -> str:
        tl = run.get("timeline", {})
        own = ", ".join(f"{n} {_f(t, '.2f')}" for n, t in tl.get("phases", []))
        kids = "; ".join(f"{c.get('label')} from {_f(c.get('start_s'), '.2f')} s: "
                         + ", ".join(f"{n} {_f(t, '.2f')}" for n, t in c.get("phases", []))
                         for c in tl.get("children", []))
        return own + (f" ({kids})" if kids else "")

    best = {k: min(d.get(k + "_runs") or [{}], key=lambda r: r.get("ready_s", 1e9)) for k in ("llm", "server")}
    return (f"start to ready: LLM() **{_f(d.get('llm_ready_s'), '.2f')} s**, server **{_f(d.get('server_ready_s'), '.2f')}"
            f" s** ({_f(d.get('server_minus_llm_s'), '+.2f')} s)<br>LLM(): {phases(best['llm'])}<br>"
            f"server: {phases(best['server'])}")


def _mm(d: dict) -> str:
    """bench/mm_gpu.py: vision-language throughput per run, batch-1 TTFT with and without an image."""
    budget = d.get("max_num_encoder_input_tokens_flag")
    head = (f"encoder budget {_f(d.get('encoder_budget_tokens'), ',')} tokens"
            f"{'' if budget else ' (default)'} ({d.get('tokens_per_image')} per image)")
    runs = "; ".join(f"{r['num_prompts']} req / {r['num_distinct_images']} images: **{_f(r['requests_per_s'], '.2f')}** "
                     f"req/s, **{_f(r['output_tok_s'])}** output tok/s, {_f(r['total_tok_s'])} total tok/s, encoder "
                     f"cache {r['mm_cache_hits']}/{r['mm_cache_queries']} hits, HF processor "
                     f"{_f(r['hf_processor_s'], '.1f')} s" for r in d.get("runs", []))
    t = d.get("ttft")
    ttft = (f"<br>TTFT batch 1: one image **{_f(t['image_ms'], '.1f')} ms** ({t['image_prompt_tokens']} tokens), "
            f"without it {_f(t['text_ms'], '.1f')} ms, text of the same length {_f(t['text_same_length_ms'], '.1f')} ms"
            if t else "")
    enc = d.get("vision_encoder_ms") or {}
    vis = f"<br>vision tower + projector: {' / '.join(_f(v, '.2f') for v in enc.values())} ms at {' / '.join(enc)} images"
    return f"{head}: {runs}{ttft}{vis if enc else ''}"


def _router(d: dict) -> str:
    """``tests/router/bench_router.py --out``: one line per routing logic."""
    ratio = d.get("hit_rate_vs_roundrobin", {})

    def one(logic: str, r: dict) -> str:
        x = f" ({_f(ratio[logic], '.2f')}x round-robin)" if logic != "roundrobin" and ratio.get(logic) else ""
        ttft = r.get("ttft_ms", {})
        return (f"{logic}: hit rate **{_f(100 * r.get('hit_rate', 0), '.1f')}%**{x}, sticky "
                f"{_f(100 * r.get('sticky', 0), '.0f')}%, {_f(r.get('req_per_s'), '.2f')} req/s, "
                f"{_f(r.get('output_tok_per_s'))} output tok/s, TTFT p50 {_f(ttft.get('p50'), '.1f')} ms "
                f"(later turns {_f(ttft.get('later_turns_p50'), '.1f')} ms)")

    return (f"{d.get('replicas')} replicas (ready in {_f(d.get('replicas_ready_s'), '.1f')} s), "
            f"{d.get('conversations')} conversations x {d.get('turns')} turns, {d.get('concurrency')} in flight: "
            + "; ".join(one(logic, r) for logic, r in d.get("logics", {}).items()))


def _junit(d: dict) -> str:
    return f"{d.get('passed')} passed, {d.get('failures')} failed, {d.get('errors')} errors, {d.get('skipped')} skipped"


def figures(results: dict) -> list[str]:
    """The key figures of a scenario's results, one string per result file that has any."""
    out = []
    for step in results.values():
        for name, d in step.items():
            if isinstance(d, dict) and "error" in d and len(d) == 1:
                out.append(f"{name}: {d['error']}")
            elif name.endswith("trace.json"):
                continue
            elif name.startswith("bench-serve-") and isinstance(d, dict):
                out.append(_serve(d))
            elif name == "throughput.json":
                out.append(_throughput(d))
            elif name == "latency.json":
                out.append(_latency(d))
            elif name == "engine_check.json":
                out.append(_engine_check(d))
            elif name == "kernels.json":
                out.append(_kernels(d))
            elif name == "sweep.json":
                out.append(_sweep(d))
            elif name == "profiles.json":
                out.append(_profiles(d))
            elif name == "startup.json":
                out.append(_startup(d))
            elif name == "router.json":
                out.append(_router(d))
            elif name.endswith(".xml"):
                out.append(_junit(d))
            elif name.startswith("mm_") and isinstance(d, dict) and "runs" in d:
                out.append(_mm(d))
            else:
                out.append(f"`{name}` (see the JSON)")
    return out


def row(rec: dict) -> str:
    steps = rec.get("steps", [])
    status = "ok" if rec.get("ok") else "; ".join(
        f"{s['name']}: " + (s["skipped"] if "skipped" in s else f"rc {s.get('rc')}" + (" timed out" if s.get("timed_out") else ""))
        for s in steps if s.get("rc") != 0)
    figs = "<br>".join(figures(rec.get("results", {}))) or "-"
    commit = (rec.get("commit") or "unknown")[:10] + ("+dirty" if rec.get("dirty") else "")
    return (f"| {rec['scenario']} | {figs} | {status} | `{commit}` | {rec.get('date', '-')} | "
            f"{rec.get('hardware', {}).get('gpu_summary', '-')} |")


def markdown(records: list[dict], title: str = "") -> str:
    if not records:
        return "no scenario results\n"
    first = records[0]
    hw = first.get("hardware", {})
    pk = hw.get("packages", {})
    head = (f"## Run — {first.get('date', '?')[:16].replace('T', ' ')} UTC — {title or 'scenarios'} "
            f"(`{' '.join(first.get('invocation') or ['python', '-m', 'bench'])}`)\n\n"
            f"{hw.get('gpu_summary', '?')}, driver {(hw.get('gpus') or [{}])[0].get('driver', '-')}, torch "
            f"{pk.get('torch')}, Triton {pk.get('triton')}, transformers {pk.get('transformers')}, Python "
            f"{hw.get('python')}; commit `{first.get('commit')}`"
            f"{' (with uncommitted changes)' if first.get('dirty') else ''}.\n\n")
    lines = ["| scenario | key figures | status | commit | date | hardware |", "|---|---|---|---|---|---|"]
    return head + "\n".join(lines + [row(r) for r in records]) + "\n"


def load(paths: list[str]) -> list[dict]:
    files: list[str] = []
    for p in paths:
        files += sorted(glob.glob(os.path.join(p, "*.json"))) if os.path.isdir(p) else [p]
    records = []
    for f in files:
        with open(f) as fh:
            d = json.load(fh)
        if isinstance(d, dict) and "scenario" in d:
            records.append(d)
    return sorted(records, key=lambda r: r.get("date", ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="scenario JSONs or folders of them")
    ap.add_argument("--title", default="", help="what the run is about")
    args = ap.parse_args(argv)
    records = load(args.paths)
    if not records:
        print(f"no scenario JSON in {' '.join(args.paths)}", file=sys.stderr)
        return 2
    sys.stdout.write(markdown(records, args.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
