"""Summarise an engine-core step trace (``PAGEDSERVE_STEP_TRACE`` or ``throughput --trace-json``):
per runner path, how long steps take from start to start, how much of it the host spent
scheduling and launching, waiting for the device, and outside ``step()`` (the serving loop).

Rows are ``[start, launched, done, tokens, requests, path]`` in ms. With async scheduling
``done`` is when the *previous* step's results were read: a wait near zero means the device was
already idle when the host got there (the host is the bottleneck).

    python bench/step_trace_stats.py steps.json [--split-gap-ms 1000]
"""
from __future__ import annotations

import argparse
import json
import statistics


def segments(rows: list[list], gap_ms: float) -> list[list[list]]:
    """Split the trace where the engine sat idle longer than ``gap_ms`` (separate benchmark runs)."""
    out: list[list[list]] = [[]]
    for i, r in enumerate(rows):
        if i and r[0] - rows[i - 1][2] > gap_ms:
            out.append([])
        out[-1].append(r)
    return [s for s in out if s]


def summarise(rows: list[list]) -> dict:
    groups: dict[str, dict[str, list[float]]] = {}
    for i, (t0, t1, t2, tokens, nreq, path) in enumerate(rows[:-1]):
        nxt = rows[i + 1][0]
        g = groups.setdefault(path, {"period": [], "launch": [], "wait": [], "outside": [], "requests": []})
        g["period"].append(nxt - t0)
        g["launch"].append(t1 - t0)
        g["wait"].append(t2 - t1)
        g["outside"].append(nxt - t2)
        g["requests"].append(nreq)
    res: dict = {"steps": len(rows), "span_s": round((rows[-1][2] - rows[0][0]) / 1e3, 3)}
    for path, g in sorted(groups.items()):
        res[path] = {"steps": len(g["period"]),
                     **{f"{k}_p50_ms": round(statistics.median(v), 3) for k, v in g.items() if k != "requests"},
                     "period_mean_ms": round(statistics.fmean(g["period"]), 3),
                     "wait_under_0.2ms": round(sum(w < 0.2 for w in g["wait"]) / len(g["wait"]), 3),
                     "requests_p50": statistics.median(g["requests"])}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--split-gap-ms", type=float, default=1000.0)
    args = ap.parse_args()
    with open(args.trace) as fh:
        rows = json.load(fh)
    for i, seg in enumerate(segments(rows, args.split_gap_ms)):
        print(f"segment {i}:", json.dumps(summarise(seg), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
