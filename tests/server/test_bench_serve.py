"""`pagedserve bench serve` against the shared server, and the benchmark datasets."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from pagedserve.benchmarks.datasets import lognormal_requests, random_requests, sample_requests
from pagedserve.benchmarks.serve_client import arrival_offsets


def test_bench_serve_writes_json_and_png(server, tmp_path):
    cmd = [sys.executable, "-m", "pagedserve.entrypoints.cli", "bench", "serve", "--base-url", server.base_url,
           "--model", "default", "--dataset", "random", "--random-input-len", "16", "--random-output-len", "4",
           "--random-range-ratio", "0.5", "--num-prompts", "6", "--request-rate", "20", "inf",
           "--metric-percentiles", "50,99", "--result-dir", str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Time to First Token" in p.stdout and "Output token throughput" in p.stdout
    for tag in ("20", "inf"):
        stem = tmp_path / f"bench-serve-random-rate{tag}"
        assert (tmp_path / f"{stem.name}.png").stat().st_size > 1000
        res = json.loads((tmp_path / f"{stem.name}.json").read_text())
        reqs = random_requests(6, 49152, 16, 4, 0.5, seed=0)
        assert res["completed"] == 6 and res["failed"] == 0
        assert res["total_output_tokens"] == sum(r.output_len for r in reqs)  # ignore_eos: exact lengths
        assert res["total_input_tokens"] == sum(r.prompt_len for r in reqs)
        for k in ("ttft", "tpot", "itl", "e2el"):
            assert res[f"mean_{k}_ms"] > 0 and res[f"p99_{k}_ms"] >= res[f"median_{k}_ms"] > 0
        assert res["median_e2el_ms"] >= res["median_ttft_ms"]
        assert res["output_throughput"] > 0 and res["request_rate"] in (20.0, "inf")
        assert res["server_counters_delta"]["pagedserve:generation_tokens_total"] == res["total_output_tokens"]
        # the prefix cache is reset before each rate: the second rate must not hit the first one's blocks
        assert res["server_counters_delta"]["pagedserve:prefix_cache_hits_total"] == 0


def test_random_dataset_matches_vllm_definition():
    reqs = random_requests(2000, 128256, 250, 180, 0.5, seed=1)
    ins = np.array([r.prompt_len for r in reqs])
    outs = np.array([r.output_len for r in reqs])
    assert ins.min() >= 125 and ins.max() <= 375 and abs(ins.mean() - 250) < 5
    assert outs.min() >= 90 and outs.max() <= 270 and abs(outs.mean() - 180) < 5
    assert all(100 <= t < 128256 - 100 for r in reqs[:50] for t in r.prompt_token_ids)
    assert [r.prompt_token_ids for r in random_requests(5, 1000, 10, 5, seed=3)] == \
        [r.prompt_token_ids for r in random_requests(5, 1000, 10, 5, seed=3)]  # seeded
    fixed = random_requests(10, 1000, 10, 5, 0.0, prefix_len=4, seed=0)
    assert {r.prompt_len for r in fixed} == {14} and len({tuple(r.prompt_token_ids[:4]) for r in fixed}) == 1


def test_lognormal_dataset():
    reqs = lognormal_requests(3000, 49152, seed=0)
    ins = np.array([r.prompt_len for r in reqs])
    outs = np.array([r.output_len for r in reqs])
    assert 16 <= ins.min() and ins.max() <= 1024 and 180 <= np.median(ins) <= 220
    assert 16 <= outs.min() and outs.max() <= 512 and 135 <= np.median(outs) <= 165


def test_chitchat_dataset():
    from pagedserve.models.resolve import resolve_model_dir
    from pagedserve.tokenizer import load_tokenizer

    tok = load_tokenizer(resolve_model_dir("default"))
    reqs = sample_requests("chitchat", 20, 49152, tok, seed=0)
    assert len(reqs) == 20 and all(1 <= r.prompt_len <= 1024 and r.prompt_text for r in reqs)
    assert all(16 <= r.output_len <= 512 for r in reqs)


def test_arrivals_poisson_normalized():
    t = arrival_offsets(400, 8.0, 1.0, seed=0)
    assert t == sorted(t) and abs(t[-1] - 400 / 8.0) < 1e-9
    gaps = np.diff(t)
    assert 0.08 < gaps.mean() < 0.17 and gaps.std() > 0.05  # exponential-ish, not uniform
    assert arrival_offsets(5, float("inf")) == [0.0] * 5


def test_bench_kinds_register_from_their_modules():
    p = subprocess.run([sys.executable, "-m", "pagedserve.entrypoints.cli", "bench", "--help"], capture_output=True,
                       text=True, timeout=120, env={**os.environ})
    assert p.returncode == 0 and "serve" in p.stdout


def test_http_layer_with_model_free_core(tmp_path_factory, tmp_path):
    """The frontend alone (a fake core stepping every 5 ms): 200 concurrent streams all complete with
    exactly their token counts — slow consumers get merged chunks, nothing is lost or stuck."""
    from tests.server.conftest import start_server

    srv = start_server(tmp_path_factory, "fake-core", [
        "--engine-core-factory", "pagedserve.benchmarks.fake_core:FakeEngineCore", "--max-num-seqs", "256",
        "--disable-access-log"], env={"PAGEDSERVE_FAKE_STEP_MS": "5"})
    try:
        cmd = [sys.executable, "-m", "pagedserve.entrypoints.cli", "bench", "serve", "--base-url", srv.base_url,
               "--model", "default", "--dataset", "random", "--random-input-len", "32", "--random-output-len", "50",
               "--num-prompts", "200", "--result-dir", str(tmp_path), "--no-plot", "--num-warmups", "0"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        res = json.loads((tmp_path / "bench-serve-random-rateinf.json").read_text())
        assert res["completed"] == 200 and res["failed"] == 0 and res["total_output_tokens"] == 200 * 50
        assert res["max_concurrent_requests"] == 200
    finally:
        srv.stop()


def test_bench_serve_starts_its_own_server(tmp_path):
    """The GPU recipe in miniature: a model directory with only config.json (dummy weights) plus a
    separate tokenizer; `bench serve` starts the server itself, runs, and stops it."""
    import shutil

    from pagedserve.models.resolve import resolve_model_dir

    smol = resolve_model_dir("default")
    model = tmp_path / "config-only"
    model.mkdir()
    shutil.copy(os.path.join(smol, "config.json"), model / "config.json")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pagedserve.entrypoints.cli", "bench", "serve", "--model", str(model),
           "--tokenizer", smol, "--server-args",
           f"--load-format dummy --max-model-len 256 --kv-cache-memory {64 << 20} --disable-access-log",
           "--dataset", "random", "--random-input-len", "12", "--random-output-len", "3", "--num-prompts", "4",
           "--request-rate", "inf", "--result-dir", str(out), "--no-plot"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((out / "bench-serve-random-rateinf.json").read_text())
    assert res["completed"] == 4 and res["total_output_tokens"] == sum(
        r.output_len for r in random_requests(4, 49152, 12, 3, seed=0))
    assert "--load-format" in res["server_cmd"] and "server stopped" in (out / "bench-serve-random-server.log").read_text()
