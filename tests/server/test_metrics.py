"""/metrics: vLLM's metric set under the prefix pagedserve:, vLLM's buckets, every metric documented."""
from __future__ import annotations

import os
import re

from tests.server.server_proc import metric, metrics, post, request, wait_for

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "metrics.md")
EXPECTED = {  # name → type
    "pagedserve:num_requests_running": "gauge", "pagedserve:num_requests_waiting": "gauge",
    "pagedserve:num_requests_swapped": "gauge", "pagedserve:kv_cache_usage_perc": "gauge",
    "pagedserve:cpu_cache_usage_perc": "gauge", "pagedserve:cache_config_info": "gauge",
    "pagedserve:num_preemptions": "counter", "pagedserve:prompt_tokens": "counter",
    "pagedserve:generation_tokens": "counter", "pagedserve:request_success": "counter",
    "pagedserve:prefix_cache_queries": "counter", "pagedserve:prefix_cache_hits": "counter",
    "pagedserve:request_rejected": "counter", "pagedserve:preemptions_by_mode": "counter",
    "pagedserve:kv_blocks_swapped_out": "counter", "pagedserve:kv_blocks_swapped_in": "counter",
    "pagedserve:kv_block_cow_copies": "counter", "pagedserve:prefix_cache_evictions": "counter",
    "pagedserve:time_to_first_token_seconds": "histogram", "pagedserve:inter_token_latency_seconds": "histogram",
    "pagedserve:request_time_per_output_token_seconds": "histogram",
    "pagedserve:e2e_request_latency_seconds": "histogram", "pagedserve:request_queue_time_seconds": "histogram",
    "pagedserve:request_inference_time_seconds": "histogram",
    "pagedserve:request_prefill_time_seconds": "histogram", "pagedserve:request_decode_time_seconds": "histogram",
    "pagedserve:iteration_tokens_total": "histogram", "pagedserve:request_params_n": "histogram",
    "pagedserve:request_prompt_tokens": "histogram", "pagedserve:request_generation_tokens": "histogram",
    "pagedserve:request_max_num_generation_tokens": "histogram",
    "pagedserve:request_params_max_tokens": "histogram",
    "pagedserve:mm_cache_queries": "counter", "pagedserve:mm_cache_hits": "counter",
    "pagedserve:mm_encoder_tokens": "counter", "pagedserve:encoder_cache_usage_perc": "gauge",
}


def _types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def test_metric_families_and_docs(server):
    status, text = request(server, "GET", "/metrics")
    assert status == 200
    types = _types(text)
    for name, kind in EXPECTED.items():
        shown = name + "_total" if kind == "counter" else name  # the text format names counters *_total
        assert types.get(shown) == kind, (name, types.get(shown))
    with open(DOC) as fh:
        doc = fh.read()
    exported = {n for n in types if n.startswith("pagedserve:")}
    missing = sorted(n for n in exported if f"`{n}" not in doc)
    assert not missing, f"metrics not documented in docs/metrics.md: {missing}"
    assert 'model_name="SmolLM2-135M-Instruct"' in text
    info = re.search(r"^pagedserve:cache_config_info\{([^}]*)\} 1\.0$", text, re.M)
    assert info and 'cache_dtype="auto"' in info.group(1) and 'block_size="16"' in info.group(1), info


def test_buckets_match_vllm(server):
    _, text = request(server, "GET", "/metrics")
    ttft = re.findall(r'pagedserve:time_to_first_token_seconds_bucket\{[^}]*le="([^"]+)"', text)
    assert ttft[:4] == ["0.001", "0.005", "0.01", "0.02"] and "2560.0" in ttft
    e2e = re.findall(r'pagedserve:e2e_request_latency_seconds_bucket\{[^}]*le="([^"]+)"', text)
    assert e2e[0] == "0.3" and "7680.0" in e2e
    it = re.findall(r'pagedserve:iteration_tokens_total_bucket\{[^}]*le="([^"]+)"', text)
    assert it[:3] == ["1.0", "8.0", "16.0"] and "16384.0" in it
    prompt = re.findall(r'pagedserve:request_prompt_tokens_bucket\{[^}]*le="([^"]+)"', text)
    assert prompt[:4] == ["1.0", "2.0", "5.0", "10.0"] and "500.0" in prompt  # 1-2-5 up to max_model_len


def test_counters_move_with_requests(server):
    before = metrics(server)

    def val(m, name, **labels):
        return sum(v for k, v in m.items() if k.split("{")[0] == name and all(f'{a}="{b}"' in k for a, b in labels.items()))

    status, resp = post(server, "/v1/completions", {"prompt": "Hi there", "max_tokens": 3, "ignore_eos": True})
    assert status == 200
    wait_for(lambda: metric(server, "pagedserve:request_success_total", finished_reason="length")
             > val(before, "pagedserve:request_success_total", finished_reason="length"), 30, what="success counted")
    after = metrics(server)
    assert val(after, "pagedserve:generation_tokens_total") - val(before, "pagedserve:generation_tokens_total") == 3
    assert val(after, "pagedserve:prompt_tokens_total") - val(before, "pagedserve:prompt_tokens_total") \
        == resp["usage"]["prompt_tokens"]
    for h in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds",
              "request_prefill_time_seconds", "request_decode_time_seconds", "request_inference_time_seconds"):
        assert val(after, f"pagedserve:{h}_count") == val(before, f"pagedserve:{h}_count") + 1, h
    assert val(after, "pagedserve:inter_token_latency_seconds_count") \
        == val(before, "pagedserve:inter_token_latency_seconds_count") + 2
