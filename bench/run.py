"""Run named benchmark scenarios (``bench/scenarios.py``); one JSON per scenario.

    python -m bench --list
    python -m bench --scenario regression --out $OUT            # on the GPU machine
    python -m bench --scenario smoke --out /tmp/bench           # CPU, ~15 s
    python -m bench --scenario serve --scenario latency --dry-run
    python -m bench --prepare                                    # here, before a GPU run that serves

Each scenario writes ``OUT/<scenario>.json``: the scenario, its commands, the commit, the date,
the hardware and each step's results (the JSON files its commands wrote; step traces summarised,
per-request lists dropped). Every command's output goes to ``OUT/bench.log``; ``OUT/summary.md``
is the RESULTS.md table of the run (``bench/report.py``). Intermediate files stay in a work folder
outside OUT (the device machine returns at most 8 files).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # ``python bench/run.py``
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import collect, environment, report  # noqa: E402
from bench.scenarios import GROUPS, MODEL, MODEL_TOK, SCENARIOS, TINY, Scenario, Step, expand, group_budget  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the environment of every command (was bench/gpu_env.sh); NVLink multicast stays off on shared hosts
BASE_ENV = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
MIN_STEP_S = 10  # a step with less budget left than this is skipped


def placeholders(work: str, py: str) -> dict[str, str]:
    return {"py": py, "work": work, "model": MODEL, "model_tok": MODEL_TOK, "tiny": TINY}


def step_command(step: Step, work: str, py: str) -> tuple[list[str], dict[str, str]]:
    ph = placeholders(work, py)
    return [a.format(**ph) for a in step.argv], {k: v.format(**ph) for k, v in step.env.items()}


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(BASE_ENV)
    runtime = os.path.join(ROOT, "runtime")
    env["PYTHONPATH"] = os.pathsep.join([runtime, ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra)
    return env


def run_step(argv: list[str], env: dict[str, str], timeout: float, log) -> tuple[int | None, bool]:
    """Run one command in its own process group (a server it starts dies with it on timeout);
    (return code, timed out)."""
    log.flush()
    proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(env), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        return proc.wait(timeout), False
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        return proc.returncode, True


def run_scenario(sc: Scenario, out: str, work_root: str, log, deadline: float | None, meta: dict) -> dict:
    started = time.time()
    rec: dict = {"scenario": sc.name, "help": sc.help, "gpus_needed": sc.gpus,
                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 **meta, "steps": [], "results": {}}
    have = meta["hardware"]["gpus"]
    for step in sc.steps:
        work = os.path.join(work_root, sc.name, step.name)
        os.makedirs(work, exist_ok=True)
        argv, env = step_command(step, work, sys.executable)
        shown, _ = step_command(step, work, "python")
        row: dict = {"name": step.name, "argv": shown, "env": env, "timeout_s": step.timeout_s}
        left = None if deadline is None else deadline - time.time()
        if sc.gpus > len(have):
            row.update(skipped=f"needs {sc.gpus} GPU(s), {len(have)} visible")
        elif any("{model_tok}" in a for a in step.argv) and not os.path.exists(
                os.path.join(ROOT, MODEL_TOK, "tokenizer.json")):
            row.update(skipped=f"no tokenizer in {MODEL_TOK}: run `python -m bench --prepare` on the machine with "
                               "network access and carry bench/carry")
        elif left is not None and left < MIN_STEP_S:
            row.update(skipped=f"the run's budget is spent ({left:.0f} s left)")
        else:
            timeout = step.timeout_s if left is None else min(step.timeout_s, left)
            log.write(f"\n===== {sc.name}/{step.name}: {shlex.join(shown)} (env {env}, timeout {timeout:.0f} s)\n")
            t0 = time.time()
            rc, timed_out = run_step(argv, env, timeout, log)
            row.update(rc=rc, timed_out=timed_out, wall_s=round(time.time() - t0, 1))
            rec["results"][step.name] = collect.step_results(work)
            collect.append_logs(work, log)  # e.g. the server's log of ``bench serve``
        rec["steps"].append(row)
        status = row.get("skipped") or (f"rc={row['rc']}" + (" TIMED OUT" if row["timed_out"] else ""))
        print(f"[{sc.name}/{step.name}] {status}" + (f" {row['wall_s']} s" if "wall_s" in row else ""), flush=True)
    rec["ok"] = all(r.get("rc") == 0 for r in rec["steps"])
    rec["wall_s"] = round(time.time() - started, 1)
    with open(os.path.join(out, f"{sc.name}.json"), "w") as fh:
        json.dump(rec, fh, indent=1, default=str)
    return rec


def list_all() -> None:
    print("scenarios:")
    for sc in SCENARIOS.values():
        where = "CPU" if sc.gpus == 0 else f"{sc.gpus} GPU" + ("s" if sc.gpus > 1 else "")
        print(f"  {sc.name:<26} [{where}] {sc.help}")
    print("groups:")
    for g in GROUPS.values():
        budget = f", budget {g.budget_s} s" if g.budget_s else ""
        print(f"  {g.name:<26} {' '.join(g.scenarios)}{budget}\n  {'':<26} {g.help}")


def dry_run(scenarios: list[Scenario], out: str) -> None:
    for sc in scenarios:
        for step in sc.steps:
            argv, env = step_command(step, os.path.join("<work>", sc.name, step.name), "python")
            prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
            print(f"# {sc.name}/{step.name} (timeout {step.timeout_s} s)\n{(prefix + ' ') if prefix else ''}"
                  f"{shlex.join(argv)}")
    print(f"# each command: cwd {ROOT}, PYTHONPATH=runtime:., "
          + " ".join(f"{k}={v}" for k, v in BASE_ENV.items()) + f"; JSONs into {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", "-s", action="append", default=[], metavar="NAME",
                    help="a scenario or group (repeatable); see --list")
    ap.add_argument("--out", default=os.environ.get("OUT") or "bench/out",
                    help="folder for the JSONs, bench.log and summary.md (default: $OUT, else bench/out)")
    ap.add_argument("--work-dir", default=None, help="intermediate files (default: a temporary folder)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole run: later steps are cut short or skipped "
                         "(default: the group's budget when one group is named)")
    ap.add_argument("--list", action="store_true", help="list the scenarios and groups")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--prepare", action="store_true",
                    help="make bench/carry (Llama 3 tokenizer + config, the commit) for a GPU run; carry it there")
    args = ap.parse_args(argv)
    if args.list:
        list_all()
        return 0
    if args.prepare:
        from bench import carry

        try:
            return carry.prepare(ROOT)
        except (RuntimeError, OSError) as e:
            print(f"--prepare: {e}", file=sys.stderr)
            return 1
    if not args.scenario:
        ap.error("give --scenario NAME (see --list), --list or --prepare")
    try:
        scenarios = expand(args.scenario)
    except ValueError as e:
        ap.error(str(e))
    if args.dry_run:
        dry_run(scenarios, args.out)
        return 0
    if args.budget is not None and args.budget <= 0:
        ap.error(f"--budget must be > 0, got {args.budget}")
    budget = args.budget if args.budget is not None else group_budget(args.scenario)
    deadline = time.time() + budget if budget else None
    os.makedirs(args.out, exist_ok=True)
    work_root = args.work_dir or tempfile.mkdtemp(prefix="pagedserve-bench-")
    meta = {**environment.commit_info(ROOT), "hardware": environment.hardware(),
            "invocation": ["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])]}
    print(f"commit {meta['commit']} ({meta['commit_source']}), {meta['hardware']['gpu_summary']}; "
          f"{len(scenarios)} scenario(s) -> {args.out}" + (f", budget {budget:.0f} s" if budget else ""), flush=True)
    records = []
    with open(os.path.join(args.out, "bench.log"), "a") as log:
        for sc in scenarios:
            records.append(run_scenario(sc, args.out, work_root, log, deadline, meta))
    table = report.markdown(records)
    with open(os.path.join(args.out, "summary.md"), "w") as fh:
        fh.write(table)
    print(table, flush=True)
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
