"""``AsyncEngine``: the online engine used by the server.

The engine core (scheduler + model) runs in its own process (:mod:`pagedserve.engine.core_proc`,
driven through :mod:`pagedserve.engine.core_client`); this object lives on the HTTP process's
event loop and does tokenization (``InputProcessor``), detokenization and stop strings
(``OutputProcessor``), the ``n`` fan-out, per-request streams, the waiting-queue bound, and the
Prometheus metrics.

``generate(prompt, sampling_params, request_id, priority)`` is an async iterator of
``RequestOutput``; ``abort(request_id)`` frees the request's KV blocks in the core. If the
consumer of a stream falls behind, pending outputs are merged (deltas concatenated), so a slow
client never slows the engine and never grows a queue.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from pagedserve import startup
from pagedserve.config import EngineConfig
from pagedserve.engine.arg_utils import EngineArgs
from pagedserve.core.scheduler_output import EngineCoreOutput
from pagedserve.core.stats import SchedulerStats
from pagedserve.engine.core_client import CoreProcess, EngineCoreClient
from pagedserve.engine.core_wire import EngineDeadError
from pagedserve.engine.llm_engine import InputProcessor, PromptType
from pagedserve.engine.output_processor import OutputProcessor
from pagedserve.engine.request_stream import RequestStream
from pagedserve.lora.request import LoRARequest
from pagedserve.outputs import RequestOutput
from pagedserve.sampling_params import SamplingParams
from pagedserve.utils import cdiv

logger = logging.getLogger(__name__)

__all__ = ["AsyncEngine", "EngineDeadError", "QueueFullError", "RequestAbortedError", "RequestRejectedError",
           "RequestStream"]

STATS_LOG_INTERVAL_S = 10.0


class QueueFullError(RuntimeError):
    """The waiting queue holds ``max_waiting_requests`` requests already."""


class RequestAbortedError(RuntimeError):
    """The request was aborted by the server (shutdown)."""


class RequestRejectedError(ValueError):
    """The engine core refused the request (e.g. it can never fit); the message says why."""


@dataclass(slots=True)
class _Track:
    """Timing of one engine-core (child) request, for the metrics."""

    stream: RequestStream
    arrival: float
    prompt_len: int
    max_tokens: int
    sched: float | None = None
    first_token: float | None = None  # frontend clock (TTFT, ITL, e2e)
    last_token: float = 0.0
    first_token_core: float | None = None  # core clock at the end of the step (prefill / decode time)
    last_token_core: float = 0.0
    num_gen: int = 0


class AsyncEngine:
    def __init__(self, config: EngineConfig, tokenizer: Any = None, log_level: str = "INFO",
                 engine_index: int = 0, enable_metrics: bool = True, log_stats: bool = True,
                 core_factory: str | None = None, core_process: CoreProcess | None = None) -> None:
        from pagedserve.tokenizer import load_tokenizer

        mc = config.model_config
        self.config = config
        self.model_config = mc
        self.served_model_name = mc.served_model_name
        self.max_model_len = mc.max_model_len
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(mc.tokenizer or mc.model, mc.trust_remote_code)
        self.processor = InputProcessor(config, self.tokenizer)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.max_waiting_requests = config.scheduler_config.max_waiting_requests
        self.metrics = None
        if enable_metrics:
            from pagedserve.metrics import EngineMetrics

            self.metrics = EngineMetrics(self.served_model_name, self.max_model_len, engine_index,
                                         max_lora=config.lora_config.max_loras if config.lora_config else None)
        self.client = EngineCoreClient(config, self._on_step, self._on_stats, self._on_rejected, self._on_dead,
                                       log_level=log_level, core_factory=core_factory, process=core_process)
        self.num_gpu_blocks = 0
        self.block_size = config.cache_config.block_size
        self.last_stats = SchedulerStats()
        self._streams: dict[str, RequestStream] = {}
        self._tracks: dict[str, _Track] = {}
        self._num_waiting = 0
        self._log_stats = log_stats
        self._log_t = time.monotonic()
        self._log_prompt = self._log_gen = 0
        self._log_spec = (0, 0, 0)  # spec decode draft / accepted tokens and drafts at the last log line

    @classmethod
    async def from_engine_args(cls, args: EngineArgs, log_level: str = "INFO", **kw: Any) -> "AsyncEngine":
        from pagedserve.tokenizer import load_tokenizer

        config = args.create_engine_config()
        tok = load_tokenizer(config.model_config.tokenizer or config.model_config.model, args.trust_remote_code)
        engine = cls(config, tokenizer=tok, log_level=log_level, **kw)
        await engine.start()
        return engine

    async def start(self, timeout: float = 1800.0) -> None:
        info = await self.client.start(timeout)
        if "startup" in info:  # the engine-core process's phases, for the server's start-up line
            startup.current().add_child(f"core[{self.served_model_name}]", info["startup"])
        self.num_gpu_blocks = int(info["num_gpu_blocks"])
        self.block_size = int(info["block_size"])
        if self.metrics is not None:
            cc = self.config.cache_config
            self.metrics.set_cache_info(block_size=self.block_size, num_gpu_blocks=self.num_gpu_blocks,
                                        enable_prefix_caching=cc.enable_prefix_caching,
                                        gpu_memory_utilization=cc.gpu_memory_utilization, swap_space=cc.swap_space,
                                        cache_dtype=cc.cache_dtype)
        logger.info("engine for %r ready: %d KV blocks of %d tokens, engine core pid %s",
                    self.served_model_name, self.num_gpu_blocks, self.block_size, info.get("pid"))

    async def shutdown(self, timeout: float = 30.0) -> None:
        self.abort_all(RequestAbortedError("the server is shutting down"))
        await self.client.shutdown(timeout)

    # -- state ----------------------------------------------------------------------------------
    @property
    def dead_reason(self) -> str | None:
        if self.client.dead is None and self.client.proc is not None and not self.client.proc.is_alive():
            self.client._mark_dead(f"the engine core process died (exit code {self.client.proc.exitcode})")
        return self.client.dead

    @property
    def is_healthy(self) -> bool:
        return self.dead_reason is None

    @property
    def core_pid(self) -> int | None:
        return self.client.proc.pid if self.client.proc is not None else None

    @property
    def num_waiting(self) -> int:
        return self._num_waiting

    @property
    def num_unfinished(self) -> int:
        return len(self._streams)

    # -- requests -------------------------------------------------------------------------------
    def check_prompt_len(self, num_tokens: int) -> None:
        """Raise ValueError for a prompt that can never run (empty, too long, larger than the cache)."""
        if num_tokens == 0:
            raise ValueError("prompt is empty: at least one token is needed")
        if num_tokens >= self.max_model_len:
            raise ValueError(f"this model's maximum context length is {self.max_model_len} tokens, and the "
                             f"prompt has {num_tokens} tokens, leaving no room for the completion")
        if self.num_gpu_blocks and cdiv(num_tokens + 1, self.block_size) > self.num_gpu_blocks:
            raise ValueError(f"the prompt has {num_tokens} tokens, more than the whole KV cache holds "
                             f"({self.num_gpu_blocks} blocks of {self.block_size} tokens)")

    def check_queue(self) -> None:
        """Raise ``QueueFullError`` (and count the rejection) when ``max_waiting_requests`` are waiting."""
        if self.max_waiting_requests is not None and self._num_waiting >= self.max_waiting_requests:
            self._reject("queue_full")
            raise QueueFullError(f"the waiting queue is full ({self._num_waiting} requests waiting, "
                                 f"--max-waiting-requests={self.max_waiting_requests}); retry later")

    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams, priority: int = 0,
                    arrival_time: float | None = None, check_queue: bool = True,
                    lora_request: LoRARequest | None = None) -> RequestStream:
        """Admit a request and return its stream. Raises ``EngineDeadError``, ``QueueFullError``, or
        ``ValueError`` (invalid prompt) before anything reaches the engine core. ``check_queue=False``:
        the caller checked the queue once for a request of several prompts (they are admitted together)."""
        dead = self.dead_reason
        if dead is not None:
            self._reject("engine_dead")
            raise EngineDeadError(dead)
        if check_queue:
            self.check_queue()
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already in use")
        lora_request = self.processor.check_lora(lora_request)
        text, ids, mm = self.processor.process_prompt(prompt)
        self.check_prompt_len(len(ids))
        max_tokens = self.processor.max_tokens(params, len(ids))
        children = self.processor.child_params(request_id, params)
        self.output_processor.add_request(request_id, text, ids, params, children)
        stream = RequestStream(request_id, params.output_kind == "delta")
        self._streams[request_id] = stream
        self._num_waiting += 1
        arrival = time.time() if arrival_time is None else arrival_time
        eos = self.processor.eos_ids
        for cid, cp in children.items():
            self._tracks[cid] = _Track(stream, arrival, len(ids), max_tokens)
            self.client.add_request((cid, ids, cp, eos, arrival, priority, max_tokens, lora_request, mm))
        m = self.metrics
        if m is not None:
            m.params_n.observe(params.n)
            m.req_max_gen.observe(max_tokens)
            if params.max_tokens is not None:
                m.req_max_tokens.observe(params.max_tokens)
        return stream

    async def generate(self, prompt: PromptType, sampling_params: SamplingParams, request_id: str,
                       priority: int = 0, arrival_time: float | None = None) -> AsyncIterator[RequestOutput]:
        stream = self.add_request(request_id, prompt, sampling_params, priority, arrival_time)
        try:
            async for out in stream:
                yield out
        finally:
            if not stream.finished:
                self.abort(request_id)

    def abort(self, request_id: str, exc: BaseException | None = None) -> None:
        """Forget a request and free its KV blocks in the core (no-op if it already finished)."""
        stream = self._streams.pop(request_id, None)
        if stream is None:
            return
        child_ids = self.output_processor.abort_requests([request_id])
        self.client.abort(child_ids)
        now = time.time()
        for cid in child_ids:
            self._finish_track(cid, "abort", now)
        self._unwait(stream)
        stream.fail(exc or RequestAbortedError(f"request {request_id} was aborted"))

    def abort_all(self, exc: BaseException) -> None:
        for rid in list(self._streams):
            self.abort(rid, exc)

    async def add_lora(self, lora_request: LoRARequest) -> bool:
        """Load an adapter in the engine core (ValueError: it cannot be served, and why)."""
        return await self.call_core("add_lora", lora_request, timeout=600.0)

    async def remove_lora(self, lora_id: int) -> bool:
        return await self.call_core("remove_lora", lora_id)

    async def call_core(self, method: str, *args: Any, timeout: float = 60.0) -> Any:
        return await self.client.call(method, *args, timeout=timeout)

    # -- core callbacks (on the event loop) -----------------------------------------------------
    def _unwait(self, stream: RequestStream) -> None:
        if stream.waiting:
            stream.waiting = False
            self._num_waiting -= 1

    def _on_step(self, wire: list[tuple], stats: SchedulerStats | None, t0: float, t1: float) -> None:
        now = time.time()
        tracks, m = self._tracks, self.metrics
        core_outs: list[EngineCoreOutput] = []
        finished: list[tuple[str, str]] = []
        num_prompt = num_gen = 0
        for rid, toks, fr, extra, first_sched in wire:
            tr = tracks.get(rid)
            if tr is None:
                continue  # aborted meanwhile
            core_outs.append(EngineCoreOutput(rid, toks, fr, **extra) if extra else EngineCoreOutput(rid, toks, fr))
            if first_sched is not None:
                tr.sched = first_sched
            if toks:
                num_gen += len(toks)
                if tr.first_token is None:
                    tr.first_token, tr.first_token_core = now, t1
                    num_prompt += tr.prompt_len
                    if m is not None:
                        m.ttft.observe(now - tr.arrival)
                    self._unwait(tr.stream)
                elif m is not None:
                    m.itl.observe(now - tr.last_token)
                tr.last_token, tr.last_token_core = now, t1
                tr.num_gen += len(toks)
            if fr is not None:
                finished.append((rid, fr))
        outs, stopped = self.output_processor.process_outputs(core_outs)
        if stopped:
            self.client.abort(stopped)  # ended by a stop string: free its blocks now
            for rid in stopped:
                self._finish_track(rid, "stop", now)
        for rid, fr in finished:
            self._finish_track(rid, fr, now)
        streams = self._streams
        for out in outs:
            s = streams.get(out.request_id)
            if s is None:
                continue
            s.put(out)
            if out.finished:
                del streams[out.request_id]
        if stats is not None:
            self._on_stats(stats)
        if m is not None and (num_prompt or num_gen):
            m.prompt_tokens.inc(num_prompt)
            m.generation_tokens.inc(num_gen)
            m.iteration_tokens.observe(num_prompt + num_gen)
        if self._log_stats:
            self._log_prompt += num_prompt
            self._log_gen += num_gen
            self._maybe_log()

    def _finish_track(self, cid: str, reason: str, now: float) -> None:
        tr = self._tracks.pop(cid, None)
        m = self.metrics
        if tr is None or m is None:
            return
        e2e = now - tr.arrival
        sched = tr.sched
        queue = e2e if sched is None else max(0.0, sched - tr.arrival)
        prefill = decode = inference = 0.0
        if tr.first_token_core is not None and sched is not None:
            prefill = max(0.0, tr.first_token_core - sched)
            decode = max(0.0, tr.last_token_core - tr.first_token_core)
            inference = max(0.0, tr.last_token_core - sched)
        tpot = (tr.last_token - tr.first_token) / (tr.num_gen - 1) if tr.num_gen > 1 and tr.first_token else None
        m.record_finished(reason, e2e, queue, prefill, decode, inference, tr.prompt_len, tr.num_gen, tpot,
                          tr.max_tokens)

    def _on_stats(self, stats: SchedulerStats) -> None:
        self.last_stats = stats
        if self.metrics is not None:
            self.metrics.record_stats(stats)

    def _on_rejected(self, rejected: list[tuple[str, str]]) -> None:
        for cid, message in rejected:
            parent = self.output_processor.child_to_parent.get(cid)
            if parent is not None:
                logger.info("engine core rejected request %s: %s", cid, message)
                self.abort(parent, RequestRejectedError(message))

    def _on_dead(self, reason: str) -> None:
        """The core is gone: fail every open stream, count its requests as aborted, and zero the
        scheduler gauges (nothing runs or waits any more; the core will not report it)."""
        exc = EngineDeadError(reason)
        for rid in list(self._streams):
            stream = self._streams.pop(rid)
            self.output_processor.abort_requests([rid])
            self._unwait(stream)
            stream.fail(exc)
        now = time.time()
        for cid in list(self._tracks):
            self._finish_track(cid, "abort", now)
        self.last_stats = SchedulerStats()
        if self.metrics is not None:
            self.metrics.clear_gauges()

    def _reject(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected[reason].inc()

    def _maybe_log(self) -> None:
        now = time.monotonic()
        dt = now - self._log_t
        if dt < STATS_LOG_INTERVAL_S:
            return
        st = self.last_stats
        spec = ""
        drafted = st.spec_num_draft_tokens_total - self._log_spec[0]
        if drafted > 0:  # speculative decoding: the acceptance rate over this interval
            accepted = st.spec_num_accepted_tokens_total - self._log_spec[1]
            drafts = st.spec_num_drafts_total - self._log_spec[2]
            spec = (f", spec decode acceptance {100.0 * accepted / drafted:.1f}% "
                    f"(mean accepted length {1 + accepted / max(1, drafts):.2f})")
        self._log_spec = (st.spec_num_draft_tokens_total, st.spec_num_accepted_tokens_total, st.spec_num_drafts_total)
        logger.info("%s: prompt %.1f tok/s, generation %.1f tok/s, running %d, waiting %d, KV cache %.1f%%%s",
                    self.served_model_name, self._log_prompt / dt, self._log_gen / dt, st.num_running,
                    st.num_waiting, 100.0 * st.kv_cache_usage, spec)
        self._log_t, self._log_prompt, self._log_gen = now, 0, 0
