"""The ``router-gpu`` scenario (``tests/router/bench_router.py`` on one GPU) checked on the CPU: its
command line parses with the benchmark's and the server's own parsers, its replicas fit one 80 GB
GPU, the chat template renders the Llama 3 format, and the conversations come from a file when the
``chitchat-dataset`` wheel is missing (``--dataset-path``, ``$PAGEDSERVE_CHITCHAT_DATASET``, the
extract that ``python -m bench --prepare`` carries)."""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex

import pytest

from bench.scenarios import CHITCHAT, LLAMA3_CHAT_TEMPLATE, MODEL, MODEL_TOK, SCENARIOS
from pagedserve.benchmarks import datasets
from tests.bench.test_runner import ROOT, bench_cli
from tests.router import bench_router


def _router_step_argv() -> list[str]:
    (step,) = SCENARIOS["router-gpu"].steps
    return [a.format(py="python", work="/w", model_tok=MODEL_TOK) for a in step.argv]


def test_router_gpu_scenario_is_listed_and_its_command_parses():
    p = bench_cli("--list")
    assert p.returncode == 0
    assert re.search(r"^  router-gpu +\[1 GPU\] pagedserve router over 3 replicas", p.stdout, re.M)
    p = bench_cli("--scenario", "router-gpu", "--dry-run")
    assert p.returncode == 0, p.stderr
    (cmd,) = [ln for ln in p.stdout.splitlines() if ln and not ln.startswith("#")]
    argv = shlex.split(cmd)
    assert argv[:2] == ["python", "tests/router/bench_router.py"] and "--out" in argv
    # the benchmark's own parser and checks (which exit on a bad flag)
    ap = bench_router.build_parser()
    args = ap.parse_args(_router_step_argv()[2:])
    assert bench_router.check_args(ap, args) == ["prefix-aware", "roundrobin", "least-load"]
    assert (args.replicas, args.turns, args.max_tokens, args.concurrency, args.ignore_eos) == (3, 3, 32, 8, True)
    assert args.dataset_path == CHITCHAT and args.out == "/w/router.json" and args.log_dir == "/w"
    # every replica flag is one of `pagedserve serve`
    from pagedserve.entrypoints.cli import build_parser

    replica = shlex.split(args.replica_args)
    ns = build_parser().parse_args(["serve", *replica])
    assert ns.model == [MODEL_TOK] and ns.load_format == "dummy" and ns.dtype == "bfloat16"
    assert ns.chat_template == LLAMA3_CHAT_TEMPLATE and os.path.isfile(os.path.join(ROOT, LLAMA3_CHAT_TEMPLATE))
    # 3 replicas on one 80 GB H100: weights (the config's parameters in bf16) + the explicit KV cache,
    # with >= 10 GB left for 3 CUDA contexts, activations and CUDA graphs
    with open(os.path.join(ROOT, MODEL, "config.json")) as fh:
        c = json.load(fh)
    h, kv = c["hidden_size"], c["num_key_value_heads"] * c["head_dim"]
    layer = h * (h + 2 * kv) + h * h + 3 * h * c["intermediate_size"]
    weights = 2 * (c["num_hidden_layers"] * layer + 2 * c["vocab_size"] * h)
    assert 15.5e9 < weights < 16.5e9  # Llama-3.1-8B: 8.03B parameters
    assert 3 * (weights + ns.kv_cache_memory) < 80e9 - 10e9, ns.kv_cache_memory
    assert ns.max_model_len >= 3 * 2 * 400 // 2  # three turns of <= 800 characters, with the replies


def _conv(*lines: str) -> dict:
    return {"messages": [[{"text": t, "sender": "a"} for t in lines[::2]], [{"text": t} for t in lines[1::2]]]}


def test_conversations_from_a_file_when_the_wheel_is_missing(tmp_path, monkeypatch):
    """The wheel's format, a tiny file: --dataset-path, the environment variable, an extract of it."""
    data = {f"id{i}": _conv(*(f"c{i} line {j} " + "x" * 60 for j in range(8))) for i in range(5)}
    data["short"] = _conv("too short")
    full = tmp_path / "dataset.json"
    full.write_text(json.dumps(data))
    convs = bench_router.load_conversations(3, 2, min_chars=150, path=str(full))
    assert len(convs) == 3 and all(len(c) == 2 and all(150 <= len(m) <= 300 for m in c) for c in convs)
    assert all(len({m.split(" line ")[0] for m in c}) == 1 for c in convs)  # each from one conversation
    monkeypatch.setenv(datasets.CHITCHAT_ENV, str(full))
    assert bench_router.load_conversations(3, 2, min_chars=150) == convs
    assert len(datasets.chitchat_conversations()) == 6  # `bench serve --dataset chitchat` reads it too
    # an extract keeps the benchmark's order: the same selection as the whole file
    extract = bench_router.chitchat_extract(4, path=str(full))
    assert extract["extract"]["count"] == 4 and len(extract["conversations"]) == 4
    part = tmp_path / "extract.json"
    part.write_text(json.dumps(extract))
    assert bench_router.load_conversations(3, 2, min_chars=150, path=str(part)) == convs
    with pytest.raises(ValueError, match="--dataset-path: an extract made for seed 0"):
        bench_router.load_conversations(3, 2, min_chars=150, seed=1, path=str(part))
    with pytest.raises(ValueError, match="fewer than 6 conversations"):
        bench_router.load_conversations(6, 2, min_chars=150, path=str(part))
    with pytest.raises(ValueError, match="not an extract"):
        bench_router.chitchat_extract(2, path=str(part))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a chitchat dataset"):
        bench_router.load_conversations(1, 1, path=str(tmp_path / "list.json"))
    monkeypatch.setenv(datasets.CHITCHAT_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError, match=datasets.CHITCHAT_ENV):
        bench_router.load_conversations(1, 1)


def test_bad_dataset_path_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench_router.main(["--dataset-path", str(tmp_path / "nope.json")])
    assert e.value.code == 2 and "--dataset-path" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_router.main(["--logics", "prefix-aware,fastest"])
    assert "--logics" in capsys.readouterr().err


def test_carried_extract_selects_what_the_wheel_selects(tmp_path):
    try:
        importlib.metadata.files("chitchat-dataset")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the chitchat-dataset wheel is not installed")
    from bench.carry import CHITCHAT_COUNT

    extract = bench_router.chitchat_extract(CHITCHAT_COUNT)
    text = json.dumps(extract)
    assert len(text) < 4e6  # carried with the tokenizers under the device's 64 MiB
    path = tmp_path / "conversations.json"
    path.write_text(text)
    assert bench_router.load_conversations(48, 3, path=str(path)) == bench_router.load_conversations(48, 3)


def test_llama3_chat_template_renders_the_llama3_format():
    from pagedserve.models.resolve import resolve_model_dir
    from pagedserve.tokenizer import load_tokenizer

    tok = load_tokenizer(resolve_model_dir("default"))
    with open(os.path.join(ROOT, LLAMA3_CHAT_TEMPLATE)) as fh:
        template = fh.read()
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "How are you?"}]
    text = tok.apply_chat_template(msgs, chat_template=template, add_generation_prompt=True, tokenize=False)
    head = "<|start_header_id|>{}<|end_header_id|>\n\n"
    assert text == (tok.bos_token + head.format("user") + "Hi<|eot_id|>" + head.format("assistant") + "Hello!<|eot_id|>"
                    + head.format("user") + "How are you?<|eot_id|>" + head.format("assistant"))


def test_router_json_and_its_results_md_line(tmp_path):
    """What the scenario writes (``--out``) and the RESULTS.md figures made from it."""
    from bench import report

    args = bench_router.build_parser().parse_args(_router_step_argv()[2:])
    args.out = str(tmp_path / "router.json")
    ttft = {"p50": 40.0, "p90": 90.0, "first_turn_p50": 80.0, "later_turns_p50": 30.0, "later_turns_mean": 31.0}
    rows = [(logic, {"hit_rate": hit, "sticky": sticky, "req_per_s": 20.0, "output_tok_per_s": 640.0,
                     "requests": 144, "elapsed_s": 7.2, "ttft_ms": ttft, "replicas": [["r0"] * 3]})
            for logic, hit, sticky in (("prefix-aware", 0.6, 1.0), ("roundrobin", 0.2, 0.0), ("least-load", 0.1, 0.0))]
    bench_router.write_json(args, rows, 41.0)
    rec = json.loads((tmp_path / "router.json").read_text())
    assert rec["hit_rate_vs_roundrobin"] == {"prefix-aware": 3.0, "roundrobin": 1.0, "least-load": 0.5}
    assert rec["replica_args"] == args.replica_args and rec["replicas_ready_s"] == 41.0
    (line,) = report.figures({"router": {"router.json": rec}})
    assert line.startswith("3 replicas (ready in 41.0 s), 48 conversations x 3 turns, 8 in flight: ")
    assert "prefix-aware: hit rate **60.0%** (3.00x round-robin), sticky 100%" in line
    assert "roundrobin: hit rate **20.0%**, sticky 0%, 20.00 req/s, 640 output tok/s, TTFT p50 40.0 ms" in line
