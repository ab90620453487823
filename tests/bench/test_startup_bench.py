"""``pagedserve bench startup`` (the ``startup`` scenario's command) end to end on CPU: LLM() and the
server each in a fresh process with dummy weights, both phase breakdowns in the JSON and the
RESULTS.md row made from it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from bench import report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_startup_bench_on_cpu(tmp_path):
    out = tmp_path / "startup.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "runtime"), ROOT])}
    p = subprocess.run([sys.executable, "-m", "pagedserve.benchmarks.startup", "--engine-args",
                        f"--device cpu --load-format dummy --max-model-len 256 --kv-cache-memory {16 << 20}",
                        "--repeat", "1", "--warmup", "0", "--output-json", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # a hang guard
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads(out.read_text())
    assert d["llm_ready_s"] > 0 and d["server_ready_s"] > 0
    (llm,), (srv,) = d["llm_runs"], d["server_runs"]
    assert [n for n, _ in llm["timeline"]["phases"]][:3] == ["imports", "config", "tokenizer"]
    assert dict(srv["timeline"]["phases"])["first_health_200"] >= 0
    assert srv["client_ready_s"] >= srv["ready_s"] - 0.5  # the client's Popen is before the process start
    (core,) = srv["timeline"]["children"]
    assert "warmup" in dict(core["phases"])
    assert "start to ready (best of 1)" in p.stdout
    row = report._startup(d)
    assert row.startswith("start to ready: LLM() **") and "core[SmolLM2-135M-Instruct]" in row
