"""The router benchmark: multi-turn chitchat conversations through ``pagedserve router`` over N
replicas, prefix-aware vs round-robin (and any other logic): prefix-cache hit rate summed over
the replicas, throughput, time to first token, and how often a conversation's turns stayed on one
replica.

    PYTHONPATH=runtime:. .venv/bin/python tests/router/bench_router.py --replicas 3 --conversations 24

On one GPU it is the bench runner's ``router-gpu`` scenario (``bench/scenarios.py``): the replicas'
flags come through ``--replica-args``, the conversations from ``--dataset-path`` (an extract that
``python -m bench --prepare`` carries) where the ``chitchat-dataset`` wheel is missing. The client
is the standard library's (``http.client``, streamed): the GPU machine has no ``openai`` package.
The tests import ``load_conversations``, ``run_workload``, ``measure`` and ``chitchat_extract`` from here.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import http.client
import json
import pathlib
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
import urllib.parse
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
for _p in (ROOT, ROOT / "runtime"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from pagedserve.benchmarks.datasets import read_chitchat  # noqa: E402
from tests.server.server_proc import metric, post  # noqa: E402

#: what an extract's header says of its order (``chitchat_extract``), checked when it is read
EXTRACT_ORDER = "the wheel's conversation ids sorted, shuffled by random.Random(seed)"


def conversation_order(convs: dict[str, Any], header: dict | None, seed: int) -> list[str]:
    """The conversation ids in the order the benchmark takes them: the wheel's ids sorted and shuffled
    with ``seed``; an extract holds the first ones of that order already (for its seed alone)."""
    if header is None:
        ids = sorted(convs)
        random.Random(seed).shuffle(ids)
        return ids
    if header.get("order") != EXTRACT_ORDER or header.get("seed") != seed:
        raise ValueError(f"--dataset-path: an extract made for seed {header.get('seed')!r} "
                         f"({header.get('order')!r}); this run needs seed {seed} ({EXTRACT_ORDER!r})")
    return list(convs)


def load_conversations(n: int, turns: int, min_chars: int = 400, seed: int = 0,
                       path: str | None = None) -> list[list[str]]:
    """``n`` conversations of ``turns`` user messages from chitchat-dataset (the wheel's file, or
    ``path`` / ``$PAGEDSERVE_CHITCHAT_DATASET``: that file or an extract of it): consecutive
    utterances of a real conversation, joined until a message has ``min_chars`` characters."""
    convs, header = read_chitchat(path)
    out: list[list[str]] = []
    for cid in conversation_order(convs, header, seed):
        msgs, cur = [], ""
        for u in convs[cid]:
            cur = f"{cur} {u}".strip()
            if len(cur) >= min_chars:
                msgs.append(cur[: 2 * min_chars])
                cur = ""
            if len(msgs) == turns:
                out.append(msgs)
                break
        if len(out) == n:
            return out
    what = "this extract" if header else "chitchat-dataset"
    raise ValueError(f"{what} has fewer than {n} conversations of {turns} x {min_chars} chars")


def chitchat_extract(count: int, seed: int = 0, path: str | None = None) -> dict[str, Any]:
    """The first ``count`` conversations in the benchmark's order (texts only), as the file
    ``load_conversations`` reads in place of the wheel's: the same conversations for any run whose
    selection they cover."""
    convs, header = read_chitchat(path)
    if header is not None:
        raise ValueError("chitchat_extract needs the whole dataset.json, not an extract")
    ids = conversation_order(convs, None, seed)[:count]
    return {"extract": {"source": "chitchat-dataset 0.9.0 dataset.json (MIT)", "seed": seed,
                        "order": EXTRACT_ORDER, "count": len(ids)},
            "conversations": {cid: {"messages": [[{"text": t} for t in convs[cid]]]} for cid in ids}}


def chat_stream(base_url: str, body: dict, timeout: float = 300.0) -> tuple[str, str, int, float]:
    """One streamed chat completion: (content, replica that served it, completion tokens, seconds to
    the first content)."""
    u = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"chat completion: HTTP {resp.status}: {resp.read()[:500]!r}")
        replica = resp.getheader("x-pagedserve-replica", "?")
        parts, tokens, ttft = [], 0, None
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                raise RuntimeError(f"chat completion: error event {ev['error']}")
            for ch in ev.get("choices") or []:
                text = (ch.get("delta") or {}).get("content")
                if text:
                    ttft = time.monotonic() - t0 if ttft is None else ttft
                    parts.append(text)
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
        return "".join(parts), replica, tokens, time.monotonic() - t0 if ttft is None else ttft
    finally:
        conn.close()


def run_conversation(base_url: str, model: str, turns: list[str], max_tokens: int,
                     ignore_eos: bool = False) -> tuple[list[str], int, list[float]]:
    """Turns in order, each with the whole history; (replica of each turn, completion tokens, TTFT
    of each turn in seconds)."""
    messages: list[dict] = []
    replicas, tokens, ttfts = [], 0, []
    for text in turns:
        messages.append({"role": "user", "content": text})
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, **({"ignore_eos": True} if ignore_eos else {})}
        content, replica, n, ttft = chat_stream(base_url, body)
        replicas.append(replica)
        tokens += n
        ttfts.append(ttft)
        messages.append({"role": "assistant", "content": content})
    return replicas, tokens, ttfts


def _ms(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 2)


def run_workload(base_url: str, model: str, convs: list[list[str]], max_tokens: int = 4,
                 concurrency: int = 4, ignore_eos: bool = False) -> dict[str, Any]:
    """All conversations, ``concurrency`` at a time; per-conversation replicas, throughput, TTFT."""
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
        results = list(ex.map(lambda c: run_conversation(base_url, model, c, max_tokens, ignore_eos), convs))
    elapsed = time.monotonic() - t0
    requests = sum(len(c) for c in convs)
    first = [t[0] for _, _, t in results]
    later = [x for _, _, t in results for x in t[1:]]
    return {"replicas": [r for r, _, _ in results], "elapsed_s": elapsed, "requests": requests,
            "req_per_s": requests / elapsed, "output_tokens": sum(t for _, t, _ in results),
            "output_tok_per_s": sum(t for _, t, _ in results) / elapsed,
            "sticky": sum(len(set(r)) == 1 for r, _, _ in results) / len(results),
            "ttft_ms": {"p50": _ms(first + later, 0.5), "p90": _ms(first + later, 0.9),
                        "first_turn_p50": _ms(first, 0.5), "later_turns_p50": _ms(later, 0.5),
                        "later_turns_mean": round(1000 * statistics.fmean(later), 2) if later else None}}


def cache_counters(replicas: list[Any]) -> tuple[float, float]:
    """(prefix-cache hits, queries) in tokens, summed over the replicas."""
    return (sum(metric(r, "pagedserve:prefix_cache_hits_total") for r in replicas),
            sum(metric(r, "pagedserve:prefix_cache_queries_total") for r in replicas))


def measure(router_url: str, replicas: list[Any], model: str, convs: list[list[str]], max_tokens: int,
            concurrency: int, ignore_eos: bool = False) -> dict[str, Any]:
    """One run from cold caches: reset every replica's prefix cache, run, read the counters."""
    for r in replicas:
        status, body = post(r, "/reset_prefix_cache", {})
        if status != 200:
            raise RuntimeError(f"{r.base_url}/reset_prefix_cache: HTTP {status} {body!r}")
    h0, q0 = cache_counters(replicas)
    out = run_workload(router_url, model, convs, max_tokens, concurrency, ignore_eos)
    h1, q1 = cache_counters(replicas)
    out["hit_rate"] = (h1 - h0) / max(1.0, q1 - q0)
    out["prefix_cache_hit_tokens"], out["prefix_cache_query_tokens"] = h1 - h0, q1 - q0
    return out


LOGICS = ("prefix-aware", "roundrobin", "least-load", "session")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--conversations", type=int, default=24)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--ignore-eos", action="store_true", help="every reply runs to --max-tokens (dummy weights)")
    ap.add_argument("--logics", default="prefix-aware,roundrobin,least-load",
                    help=f"comma-separated routing logics, one router each ({', '.join(LOGICS)})")
    ap.add_argument("--replica-args", default="", help="more flags for every replica (they override the CPU "
                    "defaults), e.g. on one GPU: '--model DIR --load-format dummy --kv-cache-memory BYTES'")
    ap.add_argument("--dataset-path", default=None, help="the chitchat file (the wheel's dataset.json or an "
                    "extract, bench/carry/chitchat); default $PAGEDSERVE_CHITCHAT_DATASET, else the wheel's")
    ap.add_argument("--seed", type=int, default=0, help="which conversations (their shuffle)")
    ap.add_argument("--log-dir", default=None, help="the replicas' and routers' logs (default: a temporary folder)")
    ap.add_argument("--out", default=None, help="write the results as JSON to this file")
    return ap


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Bad flags end in ``ap.error`` naming the flag; returns the routing logics."""
    for flag in ("replicas", "conversations", "turns", "max_tokens", "concurrency"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    logics = [x.strip() for x in args.logics.split(",") if x.strip()]
    bad = [x for x in logics if x not in LOGICS]
    if not logics or bad:
        ap.error(f"--logics: unknown routing logic(s) {bad or logics!r}; choose from {', '.join(LOGICS)}")
    try:
        shlex.split(args.replica_args)
    except ValueError as e:
        ap.error(f"--replica-args: {e}")
    return logics


def main(argv: list[str] | None = None) -> int:
    from tests.router.procs import SHARED_NAME, RouterProc, start_replicas

    ap = build_parser()
    args = ap.parse_args(argv)
    logics = check_args(ap, args)
    try:
        convs = load_conversations(args.conversations, args.turns, seed=args.seed, path=args.dataset_path)
    except (OSError, ValueError) as e:
        hint = " (`python -m bench --prepare` makes bench/carry/chitchat)" if "bench/carry" in str(e) else ""
        ap.error(f"--dataset-path: {e}{hint}")
    log_dir = pathlib.Path(args.log_dir or tempfile.mkdtemp(prefix="bench_router_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    reps = start_replicas([f"r{i}" for i in range(args.replicas)], log_dir, shlex.split(args.replica_args),
                          env={} if args.replica_args else None)
    ready_s = time.monotonic() - t0
    print(f"{args.replicas} replicas ready in {ready_s:.1f} s", flush=True)
    rows: list[tuple[str, dict]] = []
    try:
        for logic in logics:
            router = RouterProc(["--routing-logic", logic, *(x for r in reps for x in ("--backend", r.base_url))],
                                log_dir / f"router-{logic}.log")
            try:
                router.wait_models({SHARED_NAME})
                run_workload(router.base_url, SHARED_NAME, convs[:2], 2, 2)  # warm-up (not counted)
                res = measure(router.base_url, reps, SHARED_NAME, convs, args.max_tokens, args.concurrency,
                              args.ignore_eos)
            finally:
                router.stop()
            rows.append((logic, res))
            print(f"{logic:13s} hit rate {res['hit_rate']:.1%}  sticky {res['sticky']:.0%}  "
                  f"{res['req_per_s']:.2f} req/s  {res['output_tok_per_s']:.1f} output tok/s  "
                  f"TTFT p50 {res['ttft_ms']['p50']} ms (later turns {res['ttft_ms']['later_turns_p50']} ms)  "
                  f"({res['requests']} requests in {res['elapsed_s']:.1f} s)", flush=True)
    finally:
        for r in reps:
            r.stop()
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{args.replicas} replicas, {args.conversations} conversations x {args.turns} turns, "
          f"max_tokens {args.max_tokens}, concurrency {args.concurrency}")
    print("| routing logic | prefix-cache hit rate | conversations on one replica | requests/s | output tok/s "
          "| TTFT p50 (later turns) ms |")
    print("|---|---|---|---|---|---|")
    for logic, r in rows:
        print(f"| {logic} | {r['hit_rate']:.1%} | {r['sticky']:.0%} | {r['req_per_s']:.2f} | "
              f"{r['output_tok_per_s']:.1f} | {r['ttft_ms']['p50']} ({r['ttft_ms']['later_turns_p50']}) |")
    if args.out:
        write_json(args, rows, ready_s)
    return 0


def write_json(args: argparse.Namespace, rows: list[tuple[str, dict]], ready_s: float) -> None:
    by = dict(rows)
    base = by.get("roundrobin", {}).get("hit_rate")
    rec = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "replicas": args.replicas, "replica_args": args.replica_args, "conversations": args.conversations,
           "turns": args.turns, "max_tokens": args.max_tokens, "concurrency": args.concurrency,
           "ignore_eos": args.ignore_eos, "seed": args.seed, "dataset_path": args.dataset_path,
           "replicas_ready_s": round(ready_s, 1),
           "logics": {logic: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                      for logic, r in rows},
           "hit_rate_vs_roundrobin": {logic: (round(r["hit_rate"] / base, 2) if base else None)
                                      for logic, r in rows}}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(rec, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
