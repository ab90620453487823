"""``bench serve`` metrics with vLLM's definitions, the printed table, and the PNG.

- TTFT: per request, send → first text chunk.
- TPOT: per request with more than one output token, (E2E − TTFT) / (output tokens − 1).
- ITL: every gap between consecutive text chunks, pooled over all requests.
- E2E latency: send → last chunk.
- Throughputs divide by the benchmark's wall time (first send → last completion).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pagedserve.benchmarks.serve_client import RequestResult

METRICS = ("ttft", "tpot", "itl", "e2el")
NAMES = {"ttft": "Time to First Token", "tpot": "Time per Output Token (excl. 1st token)",
         "itl": "Inter-token Latency", "e2el": "End-to-end Latency"}


def compute_metrics(results: list[RequestResult], duration: float, percentiles: list[float],
                    peak_concurrency: int) -> dict[str, Any]:
    ok = [r for r in results if r.success]
    values: dict[str, list[float]] = {
        "ttft": [r.ttft for r in ok],
        "tpot": [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1],
        "itl": [x for r in ok for x in r.itl],
        "e2el": [r.latency for r in ok],
    }
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    out: dict[str, Any] = {
        "duration": duration, "completed": len(ok), "failed": len(results) - len(ok),
        "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration if duration > 0 else 0.0,
        "output_throughput": total_out / duration if duration > 0 else 0.0,
        "total_token_throughput": (total_in + total_out) / duration if duration > 0 else 0.0,
        "max_output_tokens_per_s": _peak_tokens_per_s(ok),
        "max_concurrent_requests": peak_concurrency,
    }
    for m in METRICS:
        v = np.asarray(values[m], dtype=float) * 1000.0  # ms
        out[f"mean_{m}_ms"] = float(v.mean()) if v.size else 0.0
        out[f"median_{m}_ms"] = float(np.median(v)) if v.size else 0.0
        out[f"std_{m}_ms"] = float(v.std()) if v.size else 0.0
        for p in percentiles:
            out[f"p{_pname(p)}_{m}_ms"] = float(np.percentile(v, p)) if v.size else 0.0
    out["input_lens"] = [r.prompt_len for r in results]
    out["output_lens"] = [r.output_tokens for r in results]
    out["ttfts"] = [r.ttft for r in results]
    out["itls"] = [r.itl for r in results]
    out["e2els"] = [r.latency for r in results]
    out["errors"] = [r.error for r in results]
    return out


def _pname(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else str(p)


def _peak_tokens_per_s(ok: list[RequestResult]) -> float:
    """Output tokens per 1-second bin at the busiest second (chunks are weighted so each request's
    chunks add up to its token count)."""
    times, weights = [], []
    for r in ok:
        if r.chunk_times:
            w = r.output_tokens / len(r.chunk_times)
            times.extend(r.chunk_times)
            weights.extend([w] * len(r.chunk_times))
    if not times:
        return 0.0
    counts, _ = np.histogram(times, bins=np.arange(0.0, max(times) + 1.0, 1.0), weights=weights)
    return float(counts.max()) if counts.size else 0.0


def format_report(m: dict[str, Any], title: str, percentiles: list[float]) -> str:
    w = 50
    lines = [f"{' ' + title + ' ':=^{w + 12}}",
             f"{'Successful requests:':<{w}}{m['completed']:>12}",
             f"{'Failed requests:':<{w}}{m['failed']:>12}",
             f"{'Benchmark duration (s):':<{w}}{m['duration']:>12.2f}",
             f"{'Total input tokens:':<{w}}{m['total_input_tokens']:>12}",
             f"{'Total generated tokens:':<{w}}{m['total_output_tokens']:>12}",
             f"{'Request throughput (req/s):':<{w}}{m['request_throughput']:>12.2f}",
             f"{'Output token throughput (tok/s):':<{w}}{m['output_throughput']:>12.2f}",
             f"{'Peak output token throughput (tok/s):':<{w}}{m['max_output_tokens_per_s']:>12.2f}",
             f"{'Peak concurrent requests:':<{w}}{m['max_concurrent_requests']:>12}",
             f"{'Total token throughput (tok/s):':<{w}}{m['total_token_throughput']:>12.2f}"]
    for k in METRICS:
        lines.append(f"{' ' + NAMES[k] + ' ':-^{w + 12}}")
        lines.append(f"{f'Mean {k.upper()} (ms):':<{w}}{m[f'mean_{k}_ms']:>12.2f}")
        lines.append(f"{f'Median {k.upper()} (ms):':<{w}}{m[f'median_{k}_ms']:>12.2f}")
        for p in percentiles:
            lines.append(f"{f'P{_pname(p)} {k.upper()} (ms):':<{w}}{m[f'p{_pname(p)}_{k}_ms']:>12.2f}")
    lines.append("=" * (w + 12))
    return "\n".join(lines)


def plot(m: dict[str, Any], results: list[RequestResult], path: str, title: str) -> bool:
    """Four panels: TTFT and TPOT distributions, ITL histogram, output tokens/s over time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in results if r.success]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ttft = np.sort([r.ttft * 1e3 for r in ok])
    tpot = np.sort([(r.latency - r.ttft) / (r.output_tokens - 1) * 1e3 for r in ok if r.output_tokens > 1])
    for ax, v, name in ((axes[0, 0], ttft, "TTFT"), (axes[0, 1], tpot, "TPOT")):
        if v.size:
            ax.plot(v, np.arange(1, v.size + 1) / v.size)
            for q, style in ((50, "--"), (99, ":")):
                ax.axvline(np.percentile(v, q), color="gray", linestyle=style, label=f"p{q} {np.percentile(v, q):.1f} ms")
            ax.legend(loc="lower right")
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{name} CDF")
    itl = np.asarray([x * 1e3 for r in ok for x in r.itl])
    ax = axes[1, 0]
    if itl.size:
        ax.hist(itl, bins=60, log=True)
    ax.set_xlabel("inter-token latency (ms)")
    ax.set_ylabel("chunks")
    ax.set_title("ITL histogram")
    ax = axes[1, 1]
    times, weights = [], []
    for r in ok:
        if r.chunk_times:
            times.extend(r.chunk_times)
            weights.extend([r.output_tokens / len(r.chunk_times)] * len(r.chunk_times))
    if times:
        bins = np.arange(0.0, max(times) + 1.0, 1.0)
        counts, edges = np.histogram(times, bins=bins, weights=weights)
        ax.plot(edges[:-1], counts)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("output tokens / s")
    ax.set_title(f"throughput (mean {m['output_throughput']:.0f} tok/s)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
