"""The benchmark runner (``python -m bench``): the CPU smoke scenario end to end (real engine, real
kernels through the Triton interpreter), the JSON it writes and the RESULTS.md table made from it,
and every GPU scenario's command checked against the real argument parsers, so the runner and its
scenarios cannot rot on a machine without a GPU."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from bench import environment, report, run
from bench.scenarios import GROUPS, SCENARIOS, expand

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bench_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:  # a hang guard, not a bound
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "runtime"), ROOT])}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    p = bench_cli("--scenario", "smoke", "--out", str(out))
    assert p.returncode == 0, p.stdout + p.stderr + (out / "bench.log").read_text()
    return out, p


def test_smoke_scenario_json(smoke):
    out, p = smoke
    assert sorted(os.listdir(out)) == ["bench.log", "smoke.json", "summary.md"]
    rec = json.loads((out / "smoke.json").read_text())
    assert rec["scenario"] == "smoke" and rec["ok"] is True
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert rec["commit"] == head.stdout.strip() and rec["commit_source"] == "git"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", rec["date"])
    assert rec["hardware"]["gpu_summary"] == "cpu" and rec["hardware"]["packages"]["torch"]
    assert [s["name"] for s in rec["steps"]] == ["throughput", "latency", "kernels"]
    assert all(s["rc"] == 0 and not s["timed_out"] for s in rec["steps"])
    assert rec["steps"][0]["argv"][:3] == ["python", "-m", "pagedserve.benchmarks.throughput"]
    tput = rec["results"]["throughput"]["throughput.json"]
    assert tput["num_prompts"] == 8 and tput["output_tokens"] >= 8 and tput["output_tok_s"] > 0
    assert tput["device"] == "cpu"
    trace = rec["results"]["throughput"]["trace.json"]["segments"]
    assert trace and trace[0]["steps"] > 1  # summarised per kind of step, not the raw rows
    lat = rec["results"]["latency"]["latency.json"]["runs"]
    assert lat[0]["batch_size"] == 1 and lat[0]["tpot_ms"] > 0
    kern = rec["results"]["kernels"]["kernels.json"]
    assert kern["checks"] and all(c["passed"] for c in kern["checks"]) and not kern["errors"]
    assert {c["kernel"] for c in kern["checks"]} >= {"decode", "prefill", "rmsnorm", "rotary:q", "silu_and_mul",
                                                     "store_kv"}
    log = (out / "bench.log").read_text()
    assert "===== smoke/throughput: python -m pagedserve.benchmarks.throughput" in log
    assert "[smoke/kernels] rc=0" in p.stdout


def test_report_table(smoke):
    out, _ = smoke
    rec = json.loads((out / "smoke.json").read_text())
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "report.py"), str(out), "--title", "smoke"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("| smoke |")]
    assert len(rows) == 1 and f"`{rec['commit'][:10]}" in rows[0] and rec["date"] in rows[0]
    assert "output tok/s" in rows[0] and "TPOT" in rows[0] and re.search(r"checks (\d+)/\1 passed", rows[0])
    assert "| scenario | key figures | status | commit | date | hardware |" in p.stdout
    assert (out / "summary.md").read_text().splitlines()[-1] == rows[0]


def test_list_and_dry_run():
    p = bench_cli("--list")
    assert p.returncode == 0 and "regression" in p.stdout and "smoke" in p.stdout
    p = bench_cli("--scenario", "regression", "--dry-run")
    assert p.returncode == 0, p.stderr
    cmds = [ln for ln in p.stdout.splitlines() if ln and not ln.startswith("#")]
    assert len(cmds) == sum(len(s.steps) for s in expand(["regression"]))
    assert any("gpu_engine_check.py" in c for c in cmds) and any("--request-rate 32 inf" in c for c in cmds)


def test_bad_input_names_the_flag():
    p = bench_cli("--scenario", "no-such-thing", "--dry-run")
    assert p.returncode == 2 and "--scenario" in p.stderr and "no-such-thing" in p.stderr
    p = bench_cli("--scenario", "smoke", "--budget", "0")
    assert p.returncode == 2 and "--budget" in p.stderr


def test_gpu_scenario_on_cpu_is_skipped_not_run(tmp_path):
    p = bench_cli("--scenario", "latency", "--out", str(tmp_path))
    assert p.returncode == 1
    rec = json.loads((tmp_path / "latency.json").read_text())
    assert rec["ok"] is False and "needs 1 GPU(s), 0 visible" in rec["steps"][0]["skipped"]
    assert "latency: needs 1 GPU(s), 0 visible" in report.row(rec)


def test_commit_without_git(tmp_path, monkeypatch):
    monkeypatch.delenv("PAGEDSERVE_COMMIT", raising=False)
    assert environment.commit_info(str(tmp_path))["commit"] == "unknown"
    (tmp_path / "bench" / "carry").mkdir(parents=True)
    (tmp_path / "bench" / "carry" / "COMMIT").write_text("abc123 dirty\n")
    info = environment.commit_info(str(tmp_path))
    assert info == {"commit": "abc123", "dirty": True, "commit_source": "bench/carry/COMMIT"}
    monkeypatch.setenv("PAGEDSERVE_COMMIT", "def456")
    assert environment.commit_info(str(tmp_path))["commit"] == "def456"


def test_commit_prefers_the_carried_commit_over_a_dirty_git_head(tmp_path, monkeypatch):
    """The GPU machine's copy has a .git from an older commit and newer files: the commit --prepare wrote wins."""
    import subprocess

    monkeypatch.delenv("PAGEDSERVE_COMMIT", raising=False)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert environment.commit_info(str(tmp_path)) == {"commit": head, "dirty": False, "commit_source": "git"}
    (tmp_path / "f").write_text("2")  # newer files than the .git says
    assert environment.commit_info(str(tmp_path))["dirty"] is True
    (tmp_path / "bench" / "carry").mkdir(parents=True)
    (tmp_path / "bench" / "carry" / "COMMIT").write_text("abc123\n")
    assert environment.commit_info(str(tmp_path))["commit"] == "abc123"


def test_groups_name_known_scenarios():
    for g in GROUPS.values():
        assert g.scenarios and all(n in SCENARIOS for n in g.scenarios), g.name
    reg = GROUPS["regression"]
    assert sum(st.timeout_s for n in reg.scenarios for st in SCENARIOS[n].steps) >= reg.budget_s
    assert reg.budget_s <= 480  # the lead's 10-minute command, with the machine's start to spare


def _check_pagedserve_argv(argv: list[str]) -> None:
    """Parse a step's pagedserve command (and a server's flags) with pagedserve's own parser."""
    from pagedserve.entrypoints.cli import build_parser

    parser = build_parser()
    if argv[:2] == ["-m", "pagedserve.entrypoints.cli"]:
        args = argv[2:]
    else:
        args = ["bench", argv[1].rsplit(".", 1)[1], *argv[2:]]
    ns = parser.parse_args(args)
    if getattr(ns, "server_args", None):
        parser.parse_args(["serve", "--model", "m", *shlex.split(ns.server_args)])


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_commands_parse(name):
    """Every flag of every step exists in the program it runs (pagedserve's parsers; the bench
    scripts' sources), and every path it names exists (the carried tokenizer aside)."""
    for step in SCENARIOS[name].steps:
        argv = [a.format(py="python", work="/w", model="bench/configs/llama-3.1-8b", model_tok="bench/carry/tok",
                         tiny="bench/configs/tiny-llama") for a in step.argv][1:]
        for a in argv:
            if a.startswith("bench/") and not a.startswith("bench/carry"):
                assert os.path.exists(os.path.join(ROOT, a)), a
        if argv[0] == "-m" and argv[1].startswith("pagedserve."):
            try:
                _check_pagedserve_argv(argv)
            except SystemExit as e:
                pytest.fail(f"{name}/{step.name}: pagedserve rejects {shlex.join(argv)} ({e})")
            continue
        if argv[:2] == ["-m", "pytest"]:
            continue
        if argv[0] == "-m":
            target = os.path.join(ROOT, *argv[1].split("."))
            target = os.path.join(target, "__main__.py") if os.path.isdir(target) else target + ".py"
        else:
            target = os.path.join(ROOT, argv[0])
        with open(target) as fh:
            src = fh.read()
        for flag in (a for a in argv if a.startswith("--") and " " not in a):  # not a value: a server's flags
            assert f'"{flag}"' in src, f"{name}/{step.name}: {flag} is not a flag of {target}"


def test_timeout_kills_the_step_and_its_children(tmp_path):
    t0 = time.time()
    with open(tmp_path / "log", "w") as log:
        rc, timed_out = run.run_step(["bash", "-c", "sleep 60 & sleep 60; echo never"], {}, 1.0, log)
    assert timed_out and rc is not None and rc != 0 and time.time() - t0 < 15
    assert "never" not in (tmp_path / "log").read_text()


def test_spent_budget_skips_steps(tmp_path):
    meta = {**environment.commit_info(ROOT), "hardware": environment.hardware(), "invocation": []}
    with open(tmp_path / "bench.log", "w") as log:
        rec = run.run_scenario(SCENARIOS["smoke"], str(tmp_path), str(tmp_path / "work"), log, time.time(), meta)
    assert rec["ok"] is False and all("budget is spent" in s["skipped"] for s in rec["steps"])
    assert json.loads((tmp_path / "smoke.json").read_text())["steps"] == rec["steps"]
