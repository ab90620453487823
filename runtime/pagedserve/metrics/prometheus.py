"""Prometheus metrics, named and bucketed as vLLM's with the prefix ``pagedserve:``.

Every metric carries the labels ``model_name`` (the served model name) and ``engine`` (the engine
index, "0" unless several engines serve one model), so a dashboard written for vLLM works after
replacing ``vllm:`` by ``pagedserve:``. docs/metrics.md documents each one.

The metric families are created once per process in prometheus-client's default registry;
each served model gets an :class:`EngineMetrics` holding its labelled children (cheap to update
on the hot path: no label lookups per observation).
"""
from __future__ import annotations

import logging
import re
import threading
from typing import Any

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

logger = logging.getLogger(__name__)

PREFIX = "pagedserve:"
LABELS = ["model_name", "engine"]

TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
TOKEN_LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                         10.0, 20.0, 40.0, 80.0]
REQUEST_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
ITERATION_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
N_BUCKETS = [1, 2, 5, 10, 20]
FINISH_REASONS = ("stop", "length", "abort")
REJECT_REASONS = ("queue_full", "engine_dead", "shutting_down")


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (token-count histograms)."""
    out, scale = [], 1
    while True:
        for m in (1, 2, 5):
            if m * scale > max_value:
                return out
            out.append(m * scale)
        scale *= 10


_lock = threading.Lock()
_families: dict[str, Any] | None = None
_token_histograms: dict[int, dict[str, Histogram]] = {}


def _fam() -> dict[str, Any]:
    global _families
    with _lock:
        if _families is None:
            prometheus_client.disable_created_metrics()
            g = lambda n, d, extra=(): Gauge(PREFIX + n, d, LABELS + list(extra))  # noqa: E731
            c = lambda n, d, extra=(): Counter(PREFIX + n, d, LABELS + list(extra))  # noqa: E731
            h = lambda n, d, b: Histogram(PREFIX + n, d, LABELS, buckets=b)  # noqa: E731
            _families = {
                # scheduler state (gauges)
                "running": g("num_requests_running", "Number of requests in the running batch (RUNNING)."),
                "waiting": g("num_requests_waiting", "Number of requests waiting to be scheduled (WAITING)."),
                "swapped": g("num_requests_swapped", "Number of requests whose KV blocks are swapped to CPU."),
                "kv_usage": g("kv_cache_usage_perc", "KV-cache usage: fraction of GPU KV blocks in use (1 = 100%)."),
                "cpu_usage": g("cpu_cache_usage_perc", "Fraction of CPU swap blocks in use (1 = 100%)."),
                "cache_info": g("cache_config_info", "KV cache configuration (value 1; the labels carry it).",
                                ["block_size", "num_gpu_blocks", "enable_prefix_caching",
                                 "gpu_memory_utilization", "swap_space", "cache_dtype"]),
                # counters
                "preemptions": c("num_preemptions", "Cumulative number of preemptions from the engine."),
                "prompt_tokens": c("prompt_tokens", "Number of prefill tokens processed."),
                "generation_tokens": c("generation_tokens", "Number of generation tokens processed."),
                "success": c("request_success", "Count of finished requests by finish reason.",
                             ["finished_reason"]),
                "pc_queries": c("prefix_cache_queries", "Prefix cache queries, in queried tokens."),
                "pc_hits": c("prefix_cache_hits", "Prefix cache hits, in cached tokens."),
                "rejected": c("request_rejected", "Requests refused before reaching the engine, by reason.",
                              ["reason"]),
                # memory features (pagedserve-specific)
                "preempt_mode": c("preemptions_by_mode", "Preemptions by mode (recompute or swap).", ["mode"]),
                "swap_out": c("kv_blocks_swapped_out", "KV blocks copied from GPU to CPU memory (swap preemption)."),
                "swap_in": c("kv_blocks_swapped_in", "KV blocks copied back from CPU to GPU memory."),
                "cow": c("kv_block_cow_copies", "Copy-on-write copies of shared KV blocks (n > 1, beam search)."),
                "pc_evictions": c("prefix_cache_evictions", "Cached prefix blocks reused for other content."),
                # speculative decoding (vLLM's spec_decode_* names)
                "spec_drafts": c("spec_decode_num_drafts", "Number of spec decoding drafts."),
                "spec_draft_tokens": c("spec_decode_num_draft_tokens", "Number of draft tokens."),
                "spec_accepted": c("spec_decode_num_accepted_tokens", "Number of accepted tokens."),
                "spec_accepted_pos": c("spec_decode_num_accepted_tokens_per_pos",
                                       "Accepted tokens per draft position.", ["position"]),
                # vision-language models: vLLM's mm_cache_* counters (images, here of the encoder cache)
                "mm_queries": c("mm_cache_queries", "Multimodal (encoder) cache queries, in images looked up."),
                "mm_hits": c("mm_cache_hits", "Multimodal (encoder) cache hits, in images served from the cache."),
                "enc_tokens": c("mm_encoder_tokens", "Image tokens computed by the vision encoder."),
                "enc_usage": g("encoder_cache_usage_perc",
                               "Encoder cache usage: fraction of encoder_cache_size still needed by requests."),
                # latency histograms
                "ttft": h("time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                          TTFT_BUCKETS),
                "itl": h("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                         TOKEN_LATENCY_BUCKETS),
                "tpot": h("request_time_per_output_token_seconds",
                          "Histogram of time per output token (decode time / (tokens - 1)) per request.",
                          TOKEN_LATENCY_BUCKETS),
                "e2e": h("e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                         REQUEST_LATENCY_BUCKETS),
                "queue": h("request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
                           REQUEST_LATENCY_BUCKETS),
                "inference": h("request_inference_time_seconds",
                               "Histogram of time spent in RUNNING phase for request.", REQUEST_LATENCY_BUCKETS),
                "prefill": h("request_prefill_time_seconds",
                             "Histogram of time spent in PREFILL phase for request.", REQUEST_LATENCY_BUCKETS),
                "decode": h("request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.",
                            REQUEST_LATENCY_BUCKETS),
                "iteration_tokens": h("iteration_tokens_total", "Histogram of number of tokens per engine step.",
                                      ITERATION_TOKEN_BUCKETS),
                "params_n": h("request_params_n", "Histogram of the n request parameter.", N_BUCKETS),
                # LoRA (vLLM's lora_requests_info): the value is the time of the update, the labels the state
                "lora_info": g("lora_requests_info", "Running stats on LoRA requests.",
                               ["max_lora", "waiting_lora_adapters", "running_lora_adapters"]),
            }
        return _families


def _token_hists(max_model_len: int) -> dict[str, Histogram]:
    """Token-count histograms: buckets depend on max_model_len (as in vLLM), so one family per
    distinct max_model_len would clash; they are created once with the first model's length."""
    with _lock:
        if not _token_histograms:
            b = build_1_2_5_buckets(max(1, max_model_len))
            h = lambda n, d: Histogram(PREFIX + n, d, LABELS, buckets=b)  # noqa: E731
            _token_histograms[0] = {
                "req_prompt": h("request_prompt_tokens", "Number of prefill tokens processed, per request."),
                "req_gen": h("request_generation_tokens", "Number of generation tokens processed, per request."),
                "req_max_gen": h("request_max_num_generation_tokens",
                                 "Histogram of maximum number of requested generation tokens."),
                "req_max_tokens": h("request_params_max_tokens", "Histogram of the max_tokens request parameter."),
            }
        return _token_histograms[0]


class EngineMetrics:
    """The labelled children of every metric for one served model."""

    def __init__(self, model_name: str, max_model_len: int, engine_index: int = 0, max_lora: int | None = None) -> None:
        f = _fam()
        lab = (model_name, str(engine_index))
        self.model_name = model_name
        self.running, self.waiting = f["running"].labels(*lab), f["waiting"].labels(*lab)
        self.swapped, self.kv_usage, self.cpu_usage = (f["swapped"].labels(*lab), f["kv_usage"].labels(*lab),
                                                       f["cpu_usage"].labels(*lab))
        self.preemptions, self.pc_queries, self.pc_hits = (f["preemptions"].labels(*lab),
                                                           f["pc_queries"].labels(*lab), f["pc_hits"].labels(*lab))
        self.prompt_tokens = f["prompt_tokens"].labels(*lab)
        self.generation_tokens = f["generation_tokens"].labels(*lab)
        self.success = {r: f["success"].labels(*lab, r) for r in FINISH_REASONS}
        self.rejected = {r: f["rejected"].labels(*lab, r) for r in REJECT_REASONS}
        self.ttft, self.itl, self.tpot = f["ttft"].labels(*lab), f["itl"].labels(*lab), f["tpot"].labels(*lab)
        self.e2e, self.queue, self.inference = (f["e2e"].labels(*lab), f["queue"].labels(*lab),
                                                f["inference"].labels(*lab))
        self.prefill, self.decode = f["prefill"].labels(*lab), f["decode"].labels(*lab)
        self.iteration_tokens = f["iteration_tokens"].labels(*lab)
        self.params_n = f["params_n"].labels(*lab)
        t = _token_hists(max_model_len)
        self.req_prompt, self.req_gen = t["req_prompt"].labels(*lab), t["req_gen"].labels(*lab)
        self.req_max_gen, self.req_max_tokens = t["req_max_gen"].labels(*lab), t["req_max_tokens"].labels(*lab)
        self._cache_info_labels = f["cache_info"]
        self._lab = lab
        # (SchedulerStats cumulative field, counter); a field the engine does not report stays at 0
        self._cumulative = [
            ("num_preemptions_total", self.preemptions), ("prefix_cache_queries_total", self.pc_queries),
            ("prefix_cache_hits_total", self.pc_hits),
            ("num_preemptions_recompute_total", f["preempt_mode"].labels(*lab, "recompute")),
            ("num_preemptions_swap_total", f["preempt_mode"].labels(*lab, "swap")),
            ("num_blocks_swapped_out_total", f["swap_out"].labels(*lab)),
            ("num_blocks_swapped_in_total", f["swap_in"].labels(*lab)),
            ("num_cow_copies_total", f["cow"].labels(*lab)),
            ("prefix_cache_evictions_total", f["pc_evictions"].labels(*lab)),
            ("spec_num_drafts_total", f["spec_drafts"].labels(*lab)),
            ("spec_num_draft_tokens_total", f["spec_draft_tokens"].labels(*lab)),
            ("spec_num_accepted_tokens_total", f["spec_accepted"].labels(*lab)),
            ("mm_cache_queries_total", f["mm_queries"].labels(*lab)),
            ("mm_cache_hits_total", f["mm_hits"].labels(*lab)),
            ("num_encoder_tokens_total", f["enc_tokens"].labels(*lab)),
        ]
        self.encoder_usage = f["enc_usage"].labels(*lab)
        self._last_cumulative = {name: 0 for name, _ in self._cumulative}
        self.max_lora = max_lora  # None: LoRA off, no lora_requests_info series
        self._lora_info = f["lora_info"]
        self._lora_labels: tuple[str, ...] | None = None
        self._spec_pos = f["spec_accepted_pos"]
        self._spec_pos_children: list = []  # per draft position, created when first reported
        self._last_spec_pos: list[int] = []

    def set_cache_info(self, **info: Any) -> None:
        self._cache_info_labels.labels(*self._lab, *(str(info.get(k, "")) for k in (
            "block_size", "num_gpu_blocks", "enable_prefix_caching", "gpu_memory_utilization",
            "swap_space", "cache_dtype"))).set(1)

    def record_stats(self, stats: Any) -> None:
        """Scheduler stats after a step: gauges, and counters from the cumulative totals."""
        self.running.set(getattr(stats, "num_running", 0))
        self.waiting.set(getattr(stats, "num_waiting", 0))
        self.swapped.set(getattr(stats, "num_swapped", 0))
        self.kv_usage.set(getattr(stats, "kv_cache_usage", 0.0))
        self.cpu_usage.set(getattr(stats, "cpu_cache_usage", 0.0))
        self.encoder_usage.set(getattr(stats, "encoder_cache_usage", 0.0))
        if self.max_lora is not None:
            self._record_lora(stats)
        last = self._last_cumulative
        for attr, counter in self._cumulative:
            value = getattr(stats, attr, 0) or 0
            if value > last[attr]:
                counter.inc(value - last[attr])
            last[attr] = value
        per_pos = getattr(stats, "spec_num_accepted_tokens_per_pos_total", None) or []
        while len(self._spec_pos_children) < len(per_pos):
            self._spec_pos_children.append(self._spec_pos.labels(*self._lab, str(len(self._spec_pos_children))))
            self._last_spec_pos.append(0)
        for j, value in enumerate(per_pos):
            if value > self._last_spec_pos[j]:
                self._spec_pos_children[j].inc(value - self._last_spec_pos[j])
            self._last_spec_pos[j] = value

    def _record_lora(self, stats: Any) -> None:
        """One series whose labels name the adapters with waiting / running requests (comma-separated,
        as vLLM); the previous series is removed when they change, so a scrape shows the current one."""
        labels = (*self._lab, str(self.max_lora), ",".join(getattr(stats, "waiting_lora_adapters", {}) or {}),
                  ",".join(getattr(stats, "running_lora_adapters", {}) or {}))
        if labels != self._lora_labels and self._lora_labels is not None:
            self._lora_info.remove(*self._lora_labels)
        self._lora_labels = labels
        self._lora_info.labels(*labels).set_to_current_time()

    def clear_gauges(self) -> None:
        """The engine core died: no request runs, waits or holds cache any more."""
        for g in (self.running, self.waiting, self.swapped, self.kv_usage, self.cpu_usage, self.encoder_usage):
            g.set(0)

    def record_finished(self, reason: str, e2e: float, queue: float, prefill: float, decode: float,
                        inference: float, prompt_tokens: int, generation_tokens: int, tpot: float | None,
                        max_tokens: int | None) -> None:
        self.success.get(reason, self.success["abort"]).inc()
        self.e2e.observe(e2e)
        self.queue.observe(queue)
        self.prefill.observe(prefill)
        self.decode.observe(decode)
        self.inference.observe(inference)
        self.req_prompt.observe(prompt_tokens)
        self.req_gen.observe(generation_tokens)
        if tpot is not None:
            self.tpot.observe(tpot)
        if max_tokens is not None:
            self.req_max_tokens.observe(max_tokens)


_OUR_NAMES = re.compile(rb"(?m)^(# (?:HELP|TYPE) )?pagedserve:")


def metrics_text(prefix: str = "pagedserve") -> tuple[bytes, str]:
    """The /metrics body and its content type. ``prefix="vllm"`` (``--metrics-prefix vllm``) renames
    every ``pagedserve:`` metric to ``vllm:`` so vLLM's dashboards and alerts work unchanged."""
    body = generate_latest(prometheus_client.REGISTRY)
    if prefix != "pagedserve":
        body = _OUR_NAMES.sub(rb"\g<1>" + prefix.encode() + b":", body)
    return body, CONTENT_TYPE_LATEST


_gpu_registered = False


def register_gpu_collector() -> bool:
    """Export GPU utilisation and memory through NVML when a GPU is present (idempotent)."""
    global _gpu_registered
    if _gpu_registered:
        return True
    from pagedserve.metrics.gpu import NvmlCollector

    collector = NvmlCollector.create()
    if collector is None:
        return False
    prometheus_client.REGISTRY.register(collector)
    _gpu_registered = True
    return True
