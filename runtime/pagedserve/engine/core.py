"""The engine core: scheduler + model runner, one ``step()`` at a time. Token ids in, token
ids out; no tokenizer here (it runs in its own process when serving)."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from collections import deque

from pagedserve import startup
from pagedserve.config import GiB, EngineConfig
from pagedserve.core.scheduler import Scheduler
from pagedserve.core.scheduler_output import EngineCoreOutput, SchedulerOutput
from pagedserve.core.stats import SchedulerStats
from pagedserve.lora.request import LoRARequest
from pagedserve.request import Request, RequestStatus
from pagedserve.executor import make_executor
from pagedserve.worker.model_runner import StepHandle

if TYPE_CHECKING:
    from pagedserve.structured_output.manager import StructuredOutputManager

logger = logging.getLogger(__name__)


class EngineCore:
    def __init__(self, config: EngineConfig, use_tqdm: bool = True) -> None:
        t0 = time.perf_counter()
        self.config = config
        # one process per tensor-parallel rank, or the runner in this process (executor/)
        self.executor = make_executor(config, use_tqdm=use_tqdm)
        self.runner = self.executor.runner  # the driver rank's model runner (rank 0, this process)
        startup.mark("runner")
        try:
            num_blocks = self.executor.determine_num_blocks()  # the minimum over ranks
            startup.mark("kv_profile")
            self.executor.initialize_kv_cache(num_blocks)
            startup.mark("kv_alloc")
            self.graph_capture_seconds = self.executor.capture_cuda_graphs()
            startup.mark("cuda_graphs")
            config.cache_config.num_gpu_blocks = num_blocks
            num_cpu_blocks = self._num_cpu_blocks()
            config.cache_config.num_cpu_blocks = num_cpu_blocks
            self.executor.init_block_ops(num_cpu_blocks)  # CoW copies and swaps, on every rank
            if self.runner.device.type == "cuda":
                from pagedserve.worker.warmup import warmup

                warmup(self.runner, self.executor.execute_model)
            startup.mark("warmup")
        except BaseException:
            self.executor.shutdown()
            raise
        lora = config.lora_config
        self.scheduler = Scheduler(config.scheduler_config, config.cache_config, num_blocks, num_cpu_blocks,
                                   max_loras=lora.max_loras if lora is not None else None,
                                   speculative_config=config.speculative_config)
        self.async_scheduling = config.async_scheduling
        self.loras: dict[int, LoRARequest] = {}  # adapters added (the workers cache them, LRU)
        self.inflight: tuple[SchedulerOutput, StepHandle] | None = None  # the step on the device
        # pipeline parallelism: up to pipeline_parallel_size batches in the pipeline at once, oldest
        # first (docs/pipeline_parallel.md); the scheduler skips requests whose token is still in one
        self.pp_size = config.parallel_config.pipeline_parallel_size
        self.pp_inflight: deque[tuple[SchedulerOutput, StepHandle]] = deque()
        self.scheduler.skip_in_flight = self.pp_size > 1
        self.max_batches_in_flight = 0  # the most batches seen in the pipeline at once (tests, benchmarks)
        # per-step trace for benchmarks: (start, launched, done, tokens, requests, runner path)
        self.trace: list[tuple] | None = None
        self.wait_seconds = 0.0  # host time spent waiting for the device
        self.structured_output = None  # StructuredOutputManager, made on the first structured request
        self.startup_seconds = time.perf_counter() - t0
        logger.info("engine core ready in %.2f s", self.startup_seconds)

    def _num_cpu_blocks(self) -> int:
        """The CPU swap pool: ``swap_space`` GiB of blocks, only when preemption may swap."""
        cfg = self.config
        if cfg.scheduler_config.preemption_mode == "recompute" or cfg.cache_config.swap_space <= 0:
            return 0
        return int(cfg.cache_config.swap_space * GiB // self.executor.kv_block_bytes())  # per rank

    def add_request(self, request: Request) -> None:
        lora = request.lora_request
        if lora is not None:
            self.add_lora(lora)  # read and checked on first use (a ValueError if bad); then a dict lookup
        spec = request.sampling_params.structured_outputs
        if spec is not None and request.grammar is None:
            request.grammar = self._structured_outputs().request_grammar(spec)  # compiles in a thread
        self.scheduler.add_request(request)

    def _structured_outputs(self) -> "StructuredOutputManager":
        if self.structured_output is None:
            from pagedserve.structured_output import MISSING_MESSAGE, is_available

            if not is_available():
                raise ValueError(MISSING_MESSAGE)
            from pagedserve.structured_output.manager import StructuredOutputManager

            mc = self.config.model_config
            self.structured_output = StructuredOutputManager(mc.tokenizer or mc.model, mc.arch.vocab_size,
                                                             list(mc.arch.eos_token_ids), mc.trust_remote_code)
        return self.structured_output

    # -- LoRA adapters (docs/lora.md) -------------------------------------------------------------
    def add_lora(self, lora_request: LoRARequest) -> bool:
        """Load an adapter into the CPU cache of every rank (False: it was there already)."""
        if self.config.lora_config is None:
            raise ValueError("lora_request: LoRA is not enabled; start the engine with enable_lora=True "
                             "(--enable-lora)")
        known = self.loras.get(lora_request.lora_int_id)
        if known is not None:
            if (known.lora_name, known.lora_path) != (lora_request.lora_name, lora_request.lora_path):
                raise ValueError(f"lora_int_id {known.lora_int_id} is already used by adapter {known.lora_name!r} "
                                 f"({known.lora_path}); give each adapter its own id")
            return False
        added = self.executor.add_lora(lora_request)
        self.loras[lora_request.lora_int_id] = lora_request
        return added

    def remove_lora(self, lora_id: int) -> bool:
        """Forget an adapter (CPU cache and GPU slot); requests still running with it read it again."""
        known = self.loras.pop(lora_id, None) is not None
        return self.executor.remove_lora(lora_id) or known

    def list_loras(self) -> list[int]:
        """The ids of the adapters added (and not removed)."""
        return sorted(self.loras)

    def abort_requests(self, request_ids: list[str]) -> None:
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def step(self) -> list[EngineCoreOutput]:
        """One step. With async scheduling, step N+1 is scheduled and queued on the device before
        the results of step N are read back, so the host's work overlaps the device's; outputs then
        trail the device by one step. With pipeline stages, batches of other requests enter the
        pipeline while earlier ones are still in it (``_step_pipelined``)."""
        if self.pp_size > 1 and not self._needs_sync():
            return self._step_pipelined()
        if self.pp_inflight:  # leaving the pipelined mode (beam search, penalties): drain it first
            return self._finish_pp_oldest()
        if not self.async_scheduling or self._needs_sync():
            outputs = self._finish_inflight()
            t0 = time.perf_counter()
            sched = self.scheduler.schedule()
            if sched.is_empty and not sched.block_ops:
                if self.structured_output is not None and not outputs:
                    self.structured_output.wait_any(0.01)  # only grammars compiling: do not spin
                return outputs + self.scheduler.take_errored()
            out = self.executor.execute_model(sched)
            self._trace(sched, t0, time.perf_counter())
            return outputs + self.scheduler.update_from_output(sched, out.sampled, out.logprobs, out.prompt_logprobs, out.spec)
        t0 = time.perf_counter()
        sched = self.scheduler.schedule()
        handle = None
        if not sched.is_empty or sched.block_ops:
            handle = self.executor.launch(sched, self.inflight[1] if self.inflight else None)
        t1 = time.perf_counter()
        outputs = self._finish_inflight()
        if handle is not None:
            self.inflight = (sched, handle)
        self._trace(sched, t0, t1)
        return outputs

    def _step_pipelined(self) -> list[EngineCoreOutput]:
        """Schedule a batch (requests not in the pipeline) and send it in; read back the oldest batch
        once the pipeline is full or nothing new could be scheduled."""
        t0 = time.perf_counter()
        sched = self.scheduler.schedule()
        launched = not sched.is_empty or bool(sched.block_ops)
        if launched:
            self.pp_inflight.append((sched, self.executor.launch(sched)))
            self.max_batches_in_flight = max(self.max_batches_in_flight, len(self.pp_inflight))
            self._trace(sched, t0, time.perf_counter())
        if self.pp_inflight and (len(self.pp_inflight) >= self.pp_size or not launched):
            return self._finish_pp_oldest()
        if not launched and self.structured_output is not None:
            self.structured_output.wait_any(0.01)  # only grammars compiling: do not spin
        return self.scheduler.take_errored()

    def _finish_pp_oldest(self) -> list[EngineCoreOutput]:
        sched, handle = self.pp_inflight.popleft()
        tw = time.perf_counter()
        out = self.executor.collect(handle)
        self.wait_seconds += time.perf_counter() - tw
        return self.scheduler.update_from_output(sched, out.sampled, out.logprobs, out.prompt_logprobs, out.spec)

    def _trace(self, sched: SchedulerOutput, start: float, launched: float) -> None:
        """One trace row (when tracing): ``done`` is when the previous step's results were read
        (async scheduling) or this step's (synchronous)."""
        if self.trace is not None:
            self.trace.append((start, launched, time.perf_counter(), sched.total_num_scheduled_tokens,
                               len(sched.scheduled), self.runner.last_path))

    def _finish_inflight(self) -> list[EngineCoreOutput]:
        if self.inflight is None:
            return []
        sched, handle = self.inflight
        self.inflight = None
        tw = time.perf_counter()
        out = self.executor.collect(handle)
        self.wait_seconds += time.perf_counter() - tw
        return self.scheduler.update_from_output(sched, out.sampled, out.logprobs, out.prompt_logprobs, out.spec)

    def _needs_sync(self) -> bool:
        """Requests whose next step depends on this step's tokens on the host: beam search (candidates
        are chosen on the host) and penalties (they count every generated token)."""
        return self.scheduler.num_host_sync_requests > 0

    def has_unfinished_requests(self) -> bool:
        return self.inflight is not None or bool(self.pp_inflight) or self.scheduler.has_unfinished_requests()

    def write_trace(self, path: str) -> None:
        """Write the per-step trace as JSON rows ``[start, launched, done (ms from the first step),
        tokens, requests, runner path]`` (benchmarks; ``PAGEDSERVE_STEP_TRACE`` when serving)."""
        import json

        trace = self.trace or []
        base = trace[0][0] if trace else 0.0
        rows = [[round((a - base) * 1e3, 3), round((b - base) * 1e3, 3), round((c - base) * 1e3, 3), n, r, path]
                for a, b, c, n, r, path in trace]
        with open(path, "w") as fh:
            json.dump(rows, fh)

    def get_stats(self) -> SchedulerStats:
        return self.scheduler.get_stats()

    def reset_prefix_cache(self) -> int:
        """Forget cached blocks no request holds (benchmarks: a repeat must not hit the last run's cache)."""
        return self.scheduler.reset_prefix_cache()

    def shutdown(self) -> None:
        """Stop the tensor-parallel worker processes (if any) and release the device memory; the core
        cannot step afterwards."""
        self.inflight = None
        self.pp_inflight.clear()
        if self.structured_output is not None:
            self.structured_output.shutdown()
        self.runner = None  # type: ignore[assignment]
        self.executor.shutdown()
