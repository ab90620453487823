"""``bench/mm_gpu.py`` (the ``mm-llava`` scenario's command) end to end on CPU with ``--tiny``: a tiny
LLaVA checkpoint directory built without weights (dummy load) with its HF processor, batch-1 TTFT with
and without an image, and two throughput runs (distinct images, shared images) under an encoder budget
of two images a step; the token counts are exact, the encoder-cache counters follow from the images,
and the RESULTS.md row is made from the JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from bench import report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PER_IMAGE, N, INPUT, OUTPUT = 16, 4, 12, 6  # the --tiny defaults


def test_mm_bench_tiny_on_cpu(tmp_path):
    out = tmp_path / "mm.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "runtime"), ROOT])}
    p = subprocess.run([sys.executable, "bench/mm_gpu.py", "--tiny", "--ttft-iters", "2",
                        "--max-num-encoder-input-tokens", str(2 * PER_IMAGE), "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # a hang guard
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads(out.read_text())
    assert d["tiny"] and d["device"] == "cpu" and d["tokens_per_image"] == PER_IMAGE
    assert d["encoder_budget_tokens"] == 2 * PER_IMAGE and d["max_num_encoder_input_tokens_flag"] == 2 * PER_IMAGE
    assert d["vocab_size"] % 64 == 0 and d["image_processor"].startswith("CLIPImageProcessor")
    assert set(d["vision_encoder_ms"]) == {"1", "4"} and all(v > 0 for v in d["vision_encoder_ms"].values())
    per_prompt_text = INPUT + d["prompt_template_tokens"]
    t = d["ttft"]
    assert t["iters"] == 2 and all(len(v) == 2 for v in t["each_ms"].values())
    assert t["image_ms"] > 0 and t["text_ms"] > 0 and t["text_same_length_ms"] > 0 and t["image_add_request_ms"] > 0
    assert t["image_prompt_tokens"] == t["text_same_length_prompt_tokens"] == PER_IMAGE + per_prompt_text
    assert t["text_prompt_tokens"] < per_prompt_text
    distinct, shared = d["runs"]
    assert (distinct["name"], shared["name"]) == ("distinct", "shared-2")
    assert (distinct["num_distinct_images"], shared["num_distinct_images"]) == (N, 2)
    for r in (distinct, shared):
        assert r["num_prompts"] == N and r["output_tokens"] == N * OUTPUT
        assert r["image_tokens"] == N * PER_IMAGE and r["text_tokens"] == N * per_prompt_text
        assert r["input_tokens"] == r["image_tokens"] + r["text_tokens"]
        assert r["requests_per_s"] > 0 and r["output_tok_s"] > 0 and r["total_tok_s"] > r["output_tok_s"]
        assert r["hf_processor_s"] > 0 and r["step_profile"]["steps"] >= OUTPUT
        assert 0 < r["max_encoder_tokens_per_step"] <= 2 * PER_IMAGE  # the budget: two images a step
        assert r["encoder_tokens"] == r["images_encoded"] * PER_IMAGE
        assert r["mm_cache_queries"] - r["mm_cache_hits"] == r["images_encoded"]  # every miss is encoded once
    assert distinct["images_encoded"] == N and distinct["mm_cache_hits"] == 0
    assert shared["images_encoded"] == 2 and shared["mm_cache_hits"] + shared["prefix_cache_hits"] > 0
    row = report._mm(d)
    assert row.startswith("encoder budget 32 tokens (16 per image): 4 req / 4 images: **")
    assert "TTFT batch 1: one image **" in row and "encoder cache 0/4 hits" in row
    assert report.figures({"default": {"mm_default.json": d}}) == [row]  # the runner's summary.md row
    assert "distinct:" in p.stdout and "shared-2:" in p.stdout
