"""Start-up phases (issue 25): ``LLM()`` and ``serve`` each log one ``startup ...`` line at INFO with
their phases; the server starts its engine core before it has read the model's config and tokenizer
(the core imports the engine meanwhile) and reports readiness at its first /health 200."""
from __future__ import annotations

import json
import logging
import time

from pagedserve import startup
from tests.server.server_proc import COMMON_ARGS, ServerProc, request

CORE_PHASES = ["imports", "wait_config", "model_build", "weights", "runner", "kv_profile", "kv_alloc",
               "cuda_graphs", "warmup", "ready"]


def test_timeline_line_and_json(monkeypatch, tmp_path, caplog):
    tl = startup.StartupTimeline("serve", t0=100.0)
    tl.mark("imports", 101.5)
    tl.mark("tokenizer", 102.0)
    tl.add_child("core[m]", (101.0, [("imports", 103.0), ("ready", 104.25)]))
    tl.add_child("broken", "not a timeline")  # ignored, never a crash
    tl.mark("ready", 104.5)
    assert tl.phases() == [("imports", 1.5), ("tokenizer", 0.5), ("ready", 2.5)]
    assert tl.line() == ("startup serve: ready 4.50 s after process start: imports 1.50 | tokenizer 0.50 | "
                         "ready 2.50 || core[m] (process started @1.00 s, ready @4.25 s): imports 2.00 | ready 1.25")
    path = tmp_path / "phases.json"
    monkeypatch.setenv(startup.ENV_JSON, str(path))
    with caplog.at_level(logging.INFO, logger="pagedserve.startup"):
        assert tl.log_once() and not tl.log_once()
    assert [r.getMessage() for r in caplog.records] == [tl.line()]
    d = json.loads(path.read_text())
    assert d["total_s"] == 4.5 and d["phases"][0] == ["imports", 1.5]
    assert d["children"] == [{"label": "core[m]", "start_s": 1.0, "phases": [["imports", 2.0], ["ready", 1.25]],
                              "end_s": 4.25}]


def test_process_start_time_is_before_now():
    t = startup.process_start_time()
    assert 0 <= time.time() - t < 24 * 3600


def test_llm_logs_one_startup_line(caplog):
    from pagedserve import LLM

    with caplog.at_level(logging.INFO, logger="pagedserve.startup"):
        llm = LLM(device="cpu", max_model_len=256, kv_cache_memory=64 << 20)
    try:
        lines = [r.getMessage() for r in caplog.records if r.name == "pagedserve.startup"]
        assert len(lines) == 1 and lines[0].startswith("startup LLM: ready "), lines
        names = [n for n, _ in startup.current().phases()]
        assert names == ["imports", "config", "tokenizer", "model_build", "weights", "runner", "kv_profile",
                         "kv_alloc", "cuda_graphs", "warmup", "ready"]
        assert llm.generate("Hi", use_tqdm=False)[0].outputs  # the engine works after the timeline
    finally:
        llm.shutdown()


def test_server_reports_phases_and_ready_promptly(tmp_path):
    """One ``startup serve`` line, the engine core started before the tokenizer finished loading (its
    imports overlap the frontend's), and the first /health 200 comes right after the server is ready."""
    path = tmp_path / "phases.json"
    srv = ServerProc(COMMON_ARGS + ["--disable-access-log"], str(tmp_path / "server.log"),
                     env={startup.ENV_JSON: str(path)})
    try:
        srv.wait_ready()
        deadline = time.monotonic() + 30  # written when the first /health 200 is answered
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        d = json.loads(path.read_text())
        log = srv.log_text()
        status, _ = request(srv, "GET", "/health")
        assert status == 200
    finally:
        srv.stop()
    lines = [ln for ln in log.splitlines() if "pagedserve.startup" in ln]
    assert len(lines) == 1 and "startup serve: ready " in lines[0], lines
    phases = dict(d["phases"])
    assert list(phases) == ["imports", "validate", "bind", "core_spawn", "http_listen", "config", "tokenizer",
                            "gc_freeze", "engines", "ready", "first_health_200"]
    # readiness is reported promptly: the client polls every 50 ms (the bound allows a loaded machine)
    assert phases["first_health_200"] < 2.0, d
    (core,) = d["children"]
    assert core["label"] == "core[SmolLM2-135M-Instruct]"
    assert [n for n, _ in core["phases"]] == CORE_PHASES
    ends, t = {}, 0.0
    for name, s in d["phases"]:
        t += s
        ends[name] = t
    # the engine-core process started before the frontend read the config and the tokenizer
    assert core["start_s"] <= ends["core_spawn"] + 0.5 and core["start_s"] < ends["tokenizer"], d
    assert core["end_s"] <= d["total_s"] + 0.05, d


def test_failed_resolve_ends_the_started_core(tmp_path):
    """The engine core starts before the model is resolved: a model that fails then (no tokenizer, found
    after its config went to the core) ends the server with the clear error, and the core with it."""
    model = tmp_path / "no-tokenizer"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "vocab_size": 1024, "eos_token_id": 2}))
    srv = ServerProc(["--model", str(model), "--load-format", "dummy", "--device", "cpu",
                      "--kv-cache-memory", str(16 << 20)], str(tmp_path / "server.log"))
    seen: set[int] = set()
    deadline = time.monotonic() + 240
    while srv.proc.poll() is None and time.monotonic() < deadline:
        seen.update(srv.children())
        time.sleep(0.02)
    srv._children_seen = seen
    log = srv.log_text()
    left = srv.leftover_children(wait=10.0)  # before stop(), which kills any
    code = srv.stop()
    assert code == 2, log[-3000:]
    assert "no tokenizer files" in log.splitlines()[-1]
    assert seen and not left, (seen, left)
