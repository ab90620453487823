"""``pagedserve bench startup``: start to ready of ``LLM()`` and of the server, each in a fresh process,
with the same engine flags, and each one's phase breakdown (``pagedserve/startup.py``).

``LLM()``: from the process's start to the constructor's return (tokenizer included). The server:
from the process's start to its first ``/health`` 200, polled every 20 ms (the client's figure, from
``Popen``, is reported too). Runs alternate (LLM, server, LLM, server, ...) after ``--warmup`` LLM
runs that are not counted (they fill Triton's and the OS's caches)::

    pagedserve bench startup --model bench/carry/llama-3.1-8b-tok \\
        --engine-args "--load-format dummy --dtype bfloat16" --repeat 2 --output-json startup.json
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any

from pagedserve.startup import ENV_JSON

POLL_S = 0.02


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("startup", help="start-to-ready of LLM() and of the server, with their phases",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="the model of both (default: the embedded SmolLM2)")
    p.add_argument("--engine-args", default="", help="engine flags of both, one string")
    p.add_argument("--repeat", type=int, default=2, help="timed runs of each")
    p.add_argument("--warmup", type=int, default=1, help="LLM() runs first, not counted")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one start may take")
    p.add_argument("--output-json", default=None)
    p.set_defaults(func=run)


def _engine_argv(args: argparse.Namespace) -> list[str]:
    return (["--model", args.model] if args.model else []) + shlex.split(args.engine_args)


def _env(json_path: str) -> dict[str, str]:
    return {**os.environ, ENV_JSON: json_path}


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def llm_run(args: argparse.Namespace, work: str, i: int) -> dict[str, Any]:
    """``LLM()`` in a fresh process; its phases."""
    path = os.path.join(work, f"llm{i}.json")
    cmd = [sys.executable, "-c", _LLM_CHILD, *_engine_argv(args)]
    t0 = time.time()
    p = subprocess.run(cmd, env=_env(path), capture_output=True, text=True, timeout=args.timeout)
    wall = time.time() - t0
    tl = _read(path)
    if p.returncode != 0 or tl is None:
        raise RuntimeError(f"LLM() run {i} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return {"ready_s": tl["total_s"], "process_wall_s": round(wall, 3), "timeline": tl}


#: the LLM() process: the engine flags of ``pagedserve generate`` / ``serve``
_LLM_CHILD = """
import argparse, logging, sys
logging.basicConfig(level="INFO")
from pagedserve.entrypoints.engine_flags import add_engine_flags, engine_args_from
p = argparse.ArgumentParser()
add_engine_flags(p)
from pagedserve import LLM
LLM.from_engine_args(engine_args_from(p.parse_args(sys.argv[1:])), use_tqdm=False)
"""


def server_run(args: argparse.Namespace, work: str, i: int) -> dict[str, Any]:
    """The server in a fresh process until its first /health 200; its phases."""
    from pagedserve.benchmarks.serve import _free_port

    path = os.path.join(work, f"serve{i}.json")
    port = _free_port()
    cmd = [sys.executable, "-m", "pagedserve.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port",
           str(port), "--disable-access-log", *_engine_argv(args)]
    log_path = os.path.join(work, f"serve{i}.log")
    with open(log_path, "wb") as log:
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(path))
        try:
            ready = wait_health(proc, port, args.timeout)
            deadline = time.monotonic() + 10
            while _read(path) is None and time.monotonic() < deadline:  # written at that first 200
                time.sleep(POLL_S)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    tl = _read(path)
    if ready is None or tl is None:
        with open(log_path, errors="replace") as fh:
            raise RuntimeError(f"server run {i} did not become ready:\n{fh.read()[-3000:]}")
    return {"ready_s": tl["total_s"], "client_ready_s": round(ready - t0, 3), "timeline": tl}


def wait_health(proc: subprocess.Popen, port: int, timeout: float) -> float | None:
    """Wall time of the first /health 200 (polled every ``POLL_S``); None if the server exited."""
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return time.time()
        except OSError:
            pass
        time.sleep(POLL_S)
    return None


def breakdown(tl: dict[str, Any]) -> str:
    """One timeline as text: its phases, then each child process's (with when it started)."""
    lines = [f"  {tl['label']}: ready {tl['total_s']:.2f} s: "
             + ", ".join(f"{n} {s:.2f}" for n, s in tl["phases"])]
    for c in tl.get("children", []):
        lines.append(f"    {c['label']} (started @{c['start_s']:.2f} s, ready @{c['end_s']:.2f} s): "
                     + ", ".join(f"{n} {s:.2f}" for n, s in c["phases"]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1 or args.warmup < 0:
        raise ValueError("--repeat must be >= 1 and --warmup >= 0")
    work = tempfile.mkdtemp(prefix="pagedserve-startup-")
    for i in range(args.warmup):
        r = llm_run(args, work, -1 - i)
        print(f"warm-up LLM(): ready {r['ready_s']:.2f} s (not counted)", flush=True)
    llm, server = [], []
    for i in range(args.repeat):
        llm.append(llm_run(args, work, i))
        print(f"LLM() run {i}: ready {llm[-1]['ready_s']:.2f} s\n{breakdown(llm[-1]['timeline'])}", flush=True)
        server.append(server_run(args, work, i))
        print(f"server run {i}: ready {server[-1]['ready_s']:.2f} s (client: {server[-1]['client_ready_s']:.2f} s "
              f"after Popen)\n{breakdown(server[-1]['timeline'])}", flush=True)
    best_llm = min(r["ready_s"] for r in llm)
    best_server = min(r["ready_s"] for r in server)
    result = {"model": args.model, "engine_args": args.engine_args, "llm_ready_s": best_llm,
              "server_ready_s": best_server, "server_minus_llm_s": round(best_server - best_llm, 3),
              "llm_runs": llm, "server_runs": server}
    print(f"start to ready (best of {args.repeat}): LLM() {best_llm:.2f} s, server {best_server:.2f} s "
          f"({best_server - best_llm:+.2f} s)", flush=True)
    if args.output_json:
        with open(args.output_json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pagedserve.benchmarks.startup")
    sub = p.add_subparsers(dest="kind", required=True)
    add_parser(sub)
    args = p.parse_args(["startup", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
