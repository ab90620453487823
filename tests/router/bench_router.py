"""The router benchmark: multi-turn chitchat conversations through ``pagedserve router`` over N
replicas, prefix-aware vs round-robin (and any other logic): prefix-cache hit rate summed over
the replicas, throughput, and how often a conversation's turns stayed on one replica.

    PYTHONPATH=runtime:. .venv/bin/python tests/router/bench_router.py --replicas 3 --conversations 24

The tests import ``load_conversations``, ``run_workload`` and ``cache_counters`` from here.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib.metadata
import json
import pathlib
import platform
import random
import shlex
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.server.server_proc import metric, post  # noqa: E402


def load_conversations(n: int, turns: int, min_chars: int = 400, seed: int = 0) -> list[list[str]]:
    """``n`` conversations of ``turns`` user messages from chitchat-dataset: consecutive utterances
    of a real conversation, joined until a message has ``min_chars`` characters."""
    path = next(f.locate() for f in importlib.metadata.files("chitchat-dataset") or [] if f.name == "dataset.json")
    data = json.loads(pathlib.Path(str(path)).read_text())
    ids = sorted(data)
    random.Random(seed).shuffle(ids)
    out: list[list[str]] = []
    for cid in ids:
        utterances = [m["text"] for block in data[cid]["messages"] for m in block if m.get("text")]
        msgs, cur = [], ""
        for u in utterances:
            cur = f"{cur} {u}".strip()
            if len(cur) >= min_chars:
                msgs.append(cur[: 2 * min_chars])
                cur = ""
            if len(msgs) == turns:
                out.append(msgs)
                break
        if len(out) == n:
            return out
    raise ValueError(f"chitchat-dataset has fewer than {n} conversations of {turns} x {min_chars} chars")


def run_conversation(client: Any, model: str, turns: list[str], max_tokens: int) -> tuple[list[str], int]:
    """Turns in order, each with the whole history; (replica of each turn, completion tokens)."""
    messages: list[dict] = []
    replicas, tokens = [], 0
    for text in turns:
        messages.append({"role": "user", "content": text})
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages,
                                                                max_tokens=max_tokens, temperature=0)
        resp = raw.parse()
        replicas.append(raw.headers.get("x-pagedserve-replica", "?"))
        tokens += resp.usage.completion_tokens
        messages.append({"role": "assistant", "content": resp.choices[0].message.content})
    return replicas, tokens


def run_workload(base_url: str, model: str, convs: list[list[str]], max_tokens: int = 4,
                 concurrency: int = 4) -> dict[str, Any]:
    """All conversations, ``concurrency`` at a time; per-conversation replicas, throughput."""
    import openai

    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=300)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
        results = list(ex.map(lambda c: run_conversation(client, model, c, max_tokens), convs))
    elapsed = time.monotonic() - t0
    requests = sum(len(c) for c in convs)
    return {"replicas": [r for r, _ in results], "elapsed_s": elapsed, "requests": requests,
            "req_per_s": requests / elapsed, "output_tok_per_s": sum(t for _, t in results) / elapsed,
            "sticky": sum(len(set(r)) == 1 for r, _ in results) / len(results)}


def cache_counters(replicas: list[Any]) -> tuple[float, float]:
    """(prefix-cache hits, queries) in tokens, summed over the replicas."""
    return (sum(metric(r, "pagedserve:prefix_cache_hits_total") for r in replicas),
            sum(metric(r, "pagedserve:prefix_cache_queries_total") for r in replicas))


def measure(router_url: str, replicas: list[Any], model: str, convs: list[list[str]], max_tokens: int,
            concurrency: int) -> dict[str, Any]:
    """One run from cold caches: reset every replica's prefix cache, run, read the counters."""
    for r in replicas:
        status, _ = post(r, "/reset_prefix_cache", {})
        assert status == 200
    h0, q0 = cache_counters(replicas)
    out = run_workload(router_url, model, convs, max_tokens, concurrency)
    h1, q1 = cache_counters(replicas)
    out["hit_rate"] = (h1 - h0) / max(1.0, q1 - q0)
    return out


def main() -> int:
    from tests.router.procs import SHARED_NAME, RouterProc, start_replicas

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--conversations", type=int, default=24)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--logics", default="prefix-aware,roundrobin,least-load")
    ap.add_argument("--replica-args", default="", help="more flags for every replica (they override the CPU "
                    "defaults), e.g. on one GPU: '--gpu-memory-utilization 0.2 --dtype bfloat16'")
    args = ap.parse_args()
    convs = load_conversations(args.conversations, args.turns)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_router_"))
    reps = start_replicas([f"r{i}" for i in range(args.replicas)], tmp, shlex.split(args.replica_args),
                          env={} if args.replica_args else None)
    try:
        rows = []
        for logic in args.logics.split(","):
            router = RouterProc(["--routing-logic", logic, *(x for r in reps for x in ("--backend", r.base_url))],
                                tmp / f"router-{logic}.log")
            try:
                router.wait_models({SHARED_NAME})
                run_workload(router.base_url, SHARED_NAME, convs[:2], 2, 2)  # warm-up (not counted)
                res = measure(router.base_url, reps, SHARED_NAME, convs, args.max_tokens, args.concurrency)
            finally:
                router.stop()
            rows.append((logic, res))
            print(f"{logic:13s} hit rate {res['hit_rate']:.1%}  sticky {res['sticky']:.0%}  "
                  f"{res['req_per_s']:.2f} req/s  {res['output_tok_per_s']:.1f} output tok/s  "
                  f"({res['requests']} requests in {res['elapsed_s']:.1f} s)", flush=True)
        print(f"\n{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
              f"{args.replicas} replicas, {args.conversations} conversations x {args.turns} turns, "
              f"max_tokens {args.max_tokens}, concurrency {args.concurrency}")
        print("| routing logic | prefix-cache hit rate | conversations on one replica | requests/s | output tok/s |")
        print("|---|---|---|---|---|")
        for logic, r in rows:
            print(f"| {logic} | {r['hit_rate']:.1%} | {r['sticky']:.0%} | {r['req_per_s']:.2f} | "
                  f"{r['output_tok_per_s']:.1f} |")
    finally:
        for r in reps:
            r.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
