"""``bench latency`` reports speculative decoding's acceptance; ``bench spec-verify`` times a verify
step against a decode step (CPU, a tiny model: the numbers are not checked, their presence is)."""
from __future__ import annotations

import argparse
import json

import pytest

from tests.runtime.model_factory import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pagedserve.models.resolve import resolve_model_dir

    return make_tiny_model(str(tmp_path_factory.mktemp("bench_tiny") / "llama"), "llama",
                           resolve_model_dir("default"), seed=1)


def _parse(argv: list[str]) -> argparse.Namespace:
    from pagedserve.benchmarks import cli_bench

    p = argparse.ArgumentParser()
    cli_bench.add_parser(p.add_subparsers())
    return p.parse_args(["bench", *argv])


def test_latency_reports_acceptance(tiny, tmp_path):
    out = tmp_path / "lat.json"
    args = _parse(["latency", "--model", tiny, "--device", "cpu", "--input-len", "32", "--output-len", "8",
                   "--batch-sizes", "2", "--iters", "1", "--prompt-mode", "repeat", "--output-json", str(out),
                   "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}'])
    assert args.func(args) == 0
    res = json.loads(out.read_text())
    assert res["speculative_config"]["num_speculative_tokens"] == 3
    row = res["runs"][0]
    assert {"spec_acceptance_rate", "spec_mean_accepted_length", "spec_draft_tokens"} <= set(row)
    assert 0.0 <= row["spec_acceptance_rate"] <= 1.0 and row["spec_mean_accepted_length"] >= 1.0


def test_spec_verify_times_both_steps(tiny, tmp_path):
    out = tmp_path / "sv.json"
    args = _parse(["spec-verify", "--model", tiny, "--device", "cpu", "--input-len", "16", "--batch-sizes", "1", "3",
                   "-k", "2", "--iters", "1", "--output-json", str(out)])
    assert args.func(args) == 0
    rows = json.loads(out.read_text())["runs"]
    assert [(r["batch_size"], r["k"]) for r in rows] == [(1, 2), (3, 2)]
    assert all(r["decode_ms"] > 0 and r["verify_ms"] > 0 for r in rows)
