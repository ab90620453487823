"""The model runner: owns the model, the KV cache and the sampler; runs one scheduled step."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from pagedserve.attention.selector import get_attention_backend
from pagedserve.config import GiB, EngineConfig
from pagedserve.core.scheduler_output import SchedulerOutput
from pagedserve.distributed.parallel_state import (get_pp_rank, get_pp_size, get_tp_rank, global_rank_of, pp_recv,
                                                    pp_send, tp_broadcast)
from pagedserve.forward_context import ForwardContext, set_forward_context
from pagedserve.layers.rejection_sampler import RejectionOutput, rejection_sample
from pagedserve.layers.sampler import Sampler, token_logprobs
from pagedserve.models.loader import build_model
from pagedserve.worker.encoder_cache import EncoderCache, splice_embeddings
from pagedserve.worker.input_batch import HostInput, prepare_inputs, to_device
from pagedserve.worker.sampling_metadata import build_sampling_metadata

logger = logging.getLogger(__name__)

DEFAULT_CPU_KV_CACHE_MEMORY = 2 * GiB


@dataclass
class ModelRunnerOutput:
    sampled: dict[str, int] = field(default_factory=dict)
    # request id → ([token ids], [logprobs], rank of the sampled token); sampled token first
    logprobs: dict[str, tuple[list[int], list[float], int]] = field(default_factory=dict)
    # request id → (prompt index of the first scored token, [(token ids, logprobs, rank), ...])
    prompt_logprobs: dict[str, tuple[int, list[tuple[list[int], list[float], int]]]] = field(
        default_factory=dict)
    # speculative decoding: request id → (emitted tokens: accepted drafts + 1, their logprob entries or None)
    spec: dict[str, tuple[list[int], list | None]] = field(default_factory=dict)


#: model runners created on a GPU in this process (tensor parallelism checks it: executor/tp_process.py)
CUDA_RUNNERS_CREATED = 0


class ModelRunner:
    def __init__(self, config: EngineConfig, use_tqdm: bool = True) -> None:
        global CUDA_RUNNERS_CREATED
        self.config = config
        self.mc = config.model_config
        self.device = torch.device(config.device)
        self.memory_at_start = None  # the card before this runner loaded anything (worker/kv_budget.py)
        if self.device.type == "cuda":
            CUDA_RUNNERS_CREATED += 1
            _less_fragmentation()
            from pagedserve.worker.memory import memory_snapshot

            self.memory_at_start = memory_snapshot(self.device)
        self.block_size = config.cache_config.block_size
        # --kv-cache-dtype: fp8 stores K/V as e4m3 / e5m2 with scale 1 (vLLM's default without
        # calibrated scales); the kernels widen them to the model dtype on load
        self.kv_dtype = config.cache_config.torch_dtype(self.mc.dtype)
        self.model = build_model(self.mc, config.device, use_tqdm=use_tqdm)
        # pipeline parallelism (docs/pipeline_parallel.md): this rank's stage, its layers and the
        # global ranks of the same tensor rank on the previous and next stages
        self.pp_size, self.pp_rank = get_pp_size(), get_pp_rank()
        stage = getattr(self.model, "stage", None)
        self.layer_range = (stage.start, stage.end) if stage is not None else (0, self.mc.arch.num_layers)
        tp = config.parallel_config.tensor_parallel_size
        self.pp_prev = global_rank_of(get_tp_rank(), self.pp_rank - 1, tp, self.pp_size) if self.pp_rank > 0 else None
        self.pp_next = (global_rank_of(get_tp_rank(), self.pp_rank + 1, tp, self.pp_size)
                        if self.pp_rank < self.pp_size - 1 else None)
        self.lora_manager = None  # worker/lora_manager.py: adapter slots, when LoRA is on
        if config.lora_config is not None:
            from pagedserve.worker.lora_manager import LoRAManager

            sc = config.scheduler_config
            self.lora_manager = LoRAManager(self.model, config.lora_config, self.mc.arch.num_layers, self.mc.dtype,
                                            self.device, max(sc.max_num_batched_tokens, sc.max_num_seqs, 16))
        self.backend = get_attention_backend(config.attention_backend, config.device)
        if self.backend.name == "triton":
            self.backend.max_seq_len_bound = self.mc.max_model_len  # static split rule (CUDA graphs)
        if self.device.type == "cuda" and config.attention_backend != "torch":
            from pagedserve.worker.fusion import install_fused_kernels

            install_fused_kernels(self.model)
        self.sampler = Sampler()
        # vision-language models: encoder outputs by image hash, kept and evicted as the scheduler says
        self.encoder_cache = EncoderCache()
        spec = config.speculative_config
        # EAGLE: the step's hidden states the head reads ("last": the final ones, "aux": EAGLE-3's fused
        # layers); None on every other path (nothing kept, CUDA graphs as usual)
        self.keep_hidden: str | None = None
        self.kept_hidden: torch.Tensor | None = None
        self.draft = None  # DraftModelProposer (draft_model) or EagleProposer (eagle / eagle3)
        if spec is not None and spec.method == "draft_model":
            from pagedserve.worker.draft_proposer import DraftModelProposer

            assert spec.draft_model_config is not None
            self.draft = DraftModelProposer(self, spec.draft_model_config, spec.num_speculative_tokens)
        elif spec is not None and spec.method in ("eagle", "eagle3"):
            from pagedserve.worker.eagle_proposer import EagleProposer

            self.draft = EagleProposer(self, spec)
        self.kv_cache: torch.Tensor | None = None
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.graphs = None  # DecodeCUDAGraphs once captured
        self.piecewise = None  # PiecewiseCUDAGraphs for prefill / mixed steps
        self.last_path = ""  # how the last step ran: decode-graph, piecewise or eager (for traces)
        # tensor parallelism with async scheduling: the driver broadcasts each step's sampled ids so
        # that every rank gathers the next step's input ids on its own device (executor/multiproc.py)
        self.share_sampled = config.parallel_config.tensor_parallel_size > 1 and config.async_scheduling

    # -- KV cache -----------------------------------------------------------------------------
    def kv_block_bytes(self) -> int:
        arch = self.mc.arch
        tp = self.config.parallel_config.tensor_parallel_size
        kv_heads = max(1, arch.num_kv_heads // tp)
        elem = self.kv_dtype.itemsize
        return 2 * self._kv_layers() * self.block_size * kv_heads * arch.head_dim * elem

    def _kv_layers(self) -> int:
        """Layers with KV in the cache: the target's (this pipeline stage's), then a draft model's
        (one pool, same blocks)."""
        start, end = self.layer_range
        return end - start + (self.draft.num_layers if self.draft is not None else 0)

    def determine_num_blocks(self) -> int:
        cc = self.config.cache_config
        if cc.num_gpu_blocks_override is not None:
            return cc.num_gpu_blocks_override
        if cc.kv_cache_memory is not None:
            budget = cc.kv_cache_memory
        elif self.device.type == "cuda":
            from pagedserve.worker.memory import profile_kv_budget

            budget = profile_kv_budget(self, cc.gpu_memory_utilization)
        else:
            budget = DEFAULT_CPU_KV_CACHE_MEMORY
        num = int(budget // self.kv_block_bytes())
        if num < 1:
            raise ValueError(f"no memory left for the KV cache (budget {budget / GiB:.2f} GiB); raise "
                             "gpu_memory_utilization / kv_cache_memory or lower max_num_batched_tokens")
        return num

    def initialize_kv_cache(self, num_blocks: int) -> None:
        arch = self.mc.arch
        tp = self.config.parallel_config.tensor_parallel_size
        shape = (self._kv_layers(), 2, num_blocks, self.block_size, max(1, arch.num_kv_heads // tp), arch.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
        start, end = self.layer_range  # indexed by the model's layer index; None: another stage's layer
        self.kv_caches = [None] * start + [(self.kv_cache[i, 0], self.kv_cache[i, 1])  # type: ignore[list-item]
                                           for i in range(end - start)] + [None] * (arch.num_layers - end)
        if self.draft is not None:
            self.draft.kv_caches = [(self.kv_cache[i, 0], self.kv_cache[i, 1])
                                    for i in range(arch.num_layers, self._kv_layers())]
        logger.info("KV cache: %d blocks x %d tokens = %d tokens (%.2f GiB, %s)", num_blocks, self.block_size,
                    num_blocks * self.block_size, self.kv_cache.numel() * self.kv_cache.element_size() / GiB,
                    str(self.kv_dtype).removeprefix("torch."))

    def capture_cuda_graphs(self) -> float:
        """Capture decode graphs (CUDA, unless enforce_eager); returns the capture time in seconds."""
        if self.device.type != "cuda" or self.config.enforce_eager or self.pp_size > 1:
            return 0.0  # pipeline stages run eagerly (docs/pipeline_parallel.md)
        from pagedserve.worker.cuda_graphs import DecodeCUDAGraphs

        seconds = 0.0
        if self.keep_hidden is None:  # EAGLE needs every step's hidden states: the decode graphs give logits only
            self.graphs = DecodeCUDAGraphs(self, self.config.scheduler_config.max_num_seqs)
            self.graphs.capture()
            seconds = self.graphs.capture_seconds
        from pagedserve.worker.piecewise_graphs import PiecewiseCUDAGraphs, supports_piecewise

        if supports_piecewise(self.model) and self.keep_hidden != "aux":  # EAGLE-3's layer inputs: eager
            self.piecewise = PiecewiseCUDAGraphs(self, self.config.scheduler_config.max_num_batched_tokens)
            self.piecewise.capture()
            seconds += self.piecewise.capture_seconds
        return seconds

    def release_cuda_graphs(self) -> int:
        """Destroy every captured graph (``CUDAGraph.reset``) and drop it; returns how many. A graph
        that captured NCCL collectives keeps the communicator busy: the process group's teardown
        hangs until the graphs are gone (pytorch/pytorch#115388), so tensor parallelism calls this
        before leaving the group."""
        n = 0
        for holder in (self.graphs, self.piecewise):
            if holder is None:
                continue
            for g in holder.graphs.values():
                for graph in (g if isinstance(g, list) else [g]):
                    graph.reset()
                    n += 1
            holder.graphs.clear()
        self.graphs = self.piecewise = None
        return n

    # -- LoRA adapters (worker/lora_manager.py) ------------------------------------------------
    def add_lora(self, lora_request) -> bool:
        if self.lora_manager is None:
            raise ValueError("LoRA is not enabled: start the engine with enable_lora=True (--enable-lora)")
        return self.lora_manager.add_lora(lora_request)

    def remove_lora(self, lora_id: int) -> bool:
        return self.lora_manager.remove_lora(lora_id) if self.lora_manager is not None else False

    def list_loras(self) -> list[int]:
        return self.lora_manager.list_loras() if self.lora_manager is not None else []

    # -- one step -----------------------------------------------------------------------------
    def _hidden(self, h: HostInput, prev_sampled: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states of every token (piecewise graphs or eager) and the rows to turn into logits."""
        inp = to_device(h, self.device, prev_sampled)
        if h.mm_spans:  # image features spliced into the embeddings: eager
            self.last_path = "eager"
            embeds = splice_embeddings(self.model, inp.input_ids, h.mm_spans, self.encoder_cache)
            with set_forward_context(ForwardContext(inp.attn_metadata, self.kv_caches, self.backend)):
                return self.model(inp.input_ids, inp.positions, inputs_embeds=embeds), inp.logits_indices
        if self.piecewise is not None and self.keep_hidden != "aux" and self.piecewise.can_run(h):
            self.last_path = "piecewise"
            hidden = self.piecewise.run(h, inp.input_ids, inp.positions, inp.attn_metadata)
        else:
            self.last_path = "eager"
            if self.pp_size > 1:  # (speculative decoding is refused with PP: no hidden states kept)
                return self._stage_forward(inp), inp.logits_indices
            with set_forward_context(ForwardContext(inp.attn_metadata, self.kv_caches, self.backend)):
                hidden = self.model(inp.input_ids, inp.positions)
        if self.keep_hidden is not None:  # an EAGLE head reads them after the step (worker/eagle_proposer.py)
            self.kept_hidden = (self.model.model.aux_hidden_states if self.keep_hidden == "aux"
                                else hidden[:h.num_tokens])
        return hidden, inp.logits_indices

    def _stage_forward(self, inp) -> torch.Tensor | None:  # noqa: ANN001
        """One pipeline stage: (hidden, residual) from the previous stage unless first, this stage's
        layers, then send them on (None) unless last (the final hidden states)."""
        inter = None
        if self.pp_prev is not None:
            shape = (len(inp.input_ids), self.mc.arch.hidden_size)
            inter = tuple(pp_recv([shape, shape], self.mc.dtype, self.device, self.pp_prev))
        with set_forward_context(ForwardContext(inp.attn_metadata, self.kv_caches, self.backend)):
            out = self.model(inp.input_ids, inp.positions, inter)
        if self.pp_next is None:
            return out
        pp_send(list(out), self.pp_next)
        return None

    def _logits(self, h: HostInput, prev_sampled: torch.Tensor | None) -> torch.Tensor:
        if self.graphs is not None and self.keep_hidden is None and not h.mm_spans and self.graphs.can_run(h):
            self.last_path = "decode-graph"
            return self.graphs.run(h, prev_sampled)  # decode CUDA graph: forward and LM head
        hidden, rows = self._hidden(h, prev_sampled)
        return self.model.compute_logits(hidden[rows])

    @torch.inference_mode()
    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        return self.collect(self.launch(sched))

    @torch.inference_mode()
    def launch(self, sched: SchedulerOutput, prev: "StepHandle | None" = None) -> "StepHandle":
        """Queue one step on the device without waiting for it; ``collect`` reads its results.
        ``prev`` is the step still in flight (async scheduling): tokens it samples are gathered
        on the device as inputs of this step."""
        h = None
        if sched.encoder_mm_hashes or sched.free_encoder_mm_hashes or self.encoder_cache.planned:
            self.encoder_cache.begin_step(sched.encoder_mm_hashes, sched.free_encoder_mm_hashes)
        if not sched.is_empty:
            h = prepare_inputs(sched.scheduled, self.block_size, prev.row_of if prev is not None else None)
        return self.launch_inputs(h, sched.block_ops, prev, sched)

    @torch.inference_mode()
    def launch_inputs(self, h: HostInput | None, block_ops: list, prev: "StepHandle | None",
                      sched: SchedulerOutput | None) -> "StepHandle":
        """Queue the step of host inputs ``h`` (None: block ops only). Every tensor-parallel rank
        runs this with the same ``h`` and block ops; only the driver (``sched`` given) samples."""
        if block_ops:  # copy-on-write block copies and swaps first (worker/block_ops.py)
            self.block_ops.apply(block_ops)
        handle = StepHandle()
        handle.sched = sched if self.draft is not None else None
        if h is None:
            return handle
        if self.keep_hidden is not None:
            handle.host_input = h
        prev_sampled = prev.sampled if prev is not None else None
        if self.lora_manager is not None:
            self.lora_manager.prepare(h)  # the step's adapters in slots, its token → slot layout
        if len(h.logits_indices) == 0:
            self._hidden(h, prev_sampled)  # a prefill chunk that samples nothing: fill the cache only
            handle.hidden, self.kept_hidden = self.kept_hidden, None
            return handle
        if sched is None and self.pp_next is not None:  # an earlier pipeline stage: its layers only
            self._hidden(h, prev_sampled)
            return handle
        if sched is None:  # another TP rank: forward and LM head (their collectives), no sampling
            self._logits(h, prev_sampled)
            if h.sample_rows and self.share_sampled:  # the driver's sampled ids: next step's inputs
                handle.sampled = tp_broadcast(torch.empty(len(h.sample_rows), dtype=torch.int64,
                                                          device=self.device))
            return handle
        # sampling inputs go to the device before the forward pass is queued: no sync in between
        reqs = [sched.scheduled[i].request for i, _ in h.sample_rows]
        meta = build_sampling_metadata(reqs, self.mc.arch.vocab_size, self.device) if reqs else None
        verify = self._verify_inputs(h, sched) if h.spec_rows else None
        logits = self._logits(h, prev_sampled)  # model dtype: the samplers and prompt logprobs cast
        handle.hidden, self.kept_hidden = self.kept_hidden, None
        if meta is not None:
            rows = [r for _, r in h.sample_rows]
            so = self.sampler(logits if rows == list(range(len(logits))) else logits[rows], meta)
            handle.reqs, handle.sampler_out, handle.sampled = reqs, so, so.sampled
            handle.row_of = {r.request_id: i for i, r in enumerate(reqs)}
            if self.share_sampled:
                tp_broadcast(so.sampled)
            handle.host_sampled = _to_host(so.sampled)
        if verify is not None:
            self._verify(logits, verify, handle)
        for i, first, count, first_index in h.prompt_lp_rows:
            s = sched.scheduled[i]
            req = s.request
            targets = torch.tensor(req.all_token_ids[s.start + 1:s.start + 1 + count], device=self.device)
            handle.prompt_lp.append((req, first_index, _prompt_logprobs(
                logits[first:first + count], targets, req.sampling_params.prompt_logprobs or 0)))
        if self.device.type == "cuda":
            handle.event = torch.cuda.Event()
            handle.event.record()
        return handle

    def collect(self, handle: "StepHandle") -> ModelRunnerOutput:
        """Wait for a launched step and return its sampled tokens (the step's one host sync)."""
        out = ModelRunnerOutput()
        if handle.event is not None:
            handle.event.synchronize()
        if handle.host_sampled is not None:
            for req, tok in zip(handle.reqs, handle.host_sampled.tolist()):
                out.sampled[req.request_id] = tok
        so = handle.sampler_out
        if so is not None and so.logprobs is not None:
            ids, lps, ranks = so.logprob_token_ids.tolist(), so.logprobs.tolist(), so.sampled_ranks.tolist()
            for row, req in enumerate(handle.reqs):
                k = req.sampling_params.logprobs
                if k is not None:
                    out.logprobs[req.request_id] = (ids[row][:k + 1], lps[row][:k + 1], ranks[row])
        if handle.spec_out is not None:
            self._collect_spec(handle, out)
        if handle.sched is not None:  # a draft model proposes the next step's drafts (worker/draft_proposer.py)
            self.draft.propose(handle.sched, out, handle)
        for req, first_index, (ids_t, vals_t, ranks_t) in handle.prompt_lp:
            out.prompt_logprobs[req.request_id] = (first_index, list(zip(ids_t.tolist(), vals_t.tolist(),
                                                                         ranks_t.tolist())))
        return out

    # -- speculative decoding: verify steps ----------------------------------------------------
    def _verify_inputs(self, h: HostInput, sched: SchedulerOutput) -> tuple:
        """Sampling metadata for every verify row (each request's params repeated k + 1 times), the
        draft token per row (-1 on bonus rows), and the requests; built before the forward pass."""
        reqs, rep, drafts, rows, ks = [], [], [], [], []
        for i, first, k in h.spec_rows:
            s = sched.scheduled[i]
            reqs.append(s.request)
            rep.extend([s.request] * (k + 1))
            drafts.extend(s.spec_token_ids)
            drafts.append(-1)
            rows.extend(range(first, first + k + 1))
            ks.append(k)
        meta = build_sampling_metadata(rep, self.mc.arch.vocab_size, self.device)
        draft = torch.tensor(drafts, dtype=torch.int64)
        draft = draft.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else draft
        return reqs, ks, rows, meta, draft

    def _verify(self, logits: torch.Tensor, verify: tuple, handle: "StepHandle") -> None:
        reqs, ks, rows, meta, draft = verify
        raw_lp, greedy, probs = self.sampler.target_probs(logits[rows], meta)
        res = rejection_sample(probs, greedy, meta.temperature, draft, ks, meta.generators)
        handle.spec_reqs, handle.spec_ks, handle.spec_out = reqs, ks, res
        handle.spec_host = (_to_host(res.tokens), _to_host(res.num_tokens))
        if raw_lp is not None:
            handle.spec_lp = token_logprobs(raw_lp, res.row_tokens, meta.max_num_logprobs or 0)

    @staticmethod
    def _collect_spec(handle: "StepHandle", out: ModelRunnerOutput) -> None:
        tokens, nums = (t.tolist() for t in handle.spec_host)
        lp = [t.tolist() for t in handle.spec_lp] if handle.spec_lp is not None else None
        first = 0
        for b, (req, k) in enumerate(zip(handle.spec_reqs, handle.spec_ks)):
            n = nums[b]
            entries = None
            top = req.sampling_params.logprobs
            if lp is not None and top is not None:
                ids, vals, ranks = lp
                entries = [(ids[r][:top + 1], vals[r][:top + 1], ranks[r]) for r in range(first, first + n)]
            out.spec[req.request_id] = (tokens[b][:n], entries)
            first += k + 1


@dataclass
class StepHandle:
    """A launched step: device tensors of its results and the event that marks their completion."""

    reqs: list = field(default_factory=list)
    sampled: torch.Tensor | None = None  # [B] on the device (inputs of the next step)
    host_sampled: torch.Tensor | None = None  # the same, copied to (pinned) host memory
    sampler_out: object = None
    row_of: dict[str, int] = field(default_factory=dict)
    prompt_lp: list = field(default_factory=list)
    event: "torch.cuda.Event | None" = None
    # speculative decoding: the verify step's requests, their k, the rejection sampler's output (device
    # and host copies) and the emitted tokens' logprobs
    spec_reqs: list = field(default_factory=list)
    spec_ks: list = field(default_factory=list)
    spec_out: "RejectionOutput | None" = None
    spec_host: tuple = ()
    spec_lp: tuple | None = None
    sched: "SchedulerOutput | None" = None  # the step (kept when a draft model proposes after it)
    host_input: "HostInput | None" = None  # EAGLE: the step's layout and hidden states (its head reads them)
    hidden: torch.Tensor | None = None


def _less_fragmentation() -> None:
    """Expandable segments: varying batch shapes do not strand reserved memory (the KV budget holds).
    ``PAGEDSERVE_EXPANDABLE_SEGMENTS=0`` leaves the allocator alone (with it, the tensor-parallel
    later-engine stall also went away in run 24; the default fix is NCCL_GRAPH_REGISTER=0,
    docs/tensor_parallel.md)."""
    if os.environ.get("PAGEDSERVE_EXPANDABLE_SEGMENTS") == "0":
        return
    try:
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    except (RuntimeError, AttributeError):  # older torch, or the allocator is already in use
        pass


def _to_host(t: torch.Tensor) -> torch.Tensor:
    if t.device.type != "cuda":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


def _prompt_logprobs(logits: torch.Tensor, targets: torch.Tensor, k: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token ids, logprobs, rank of the prompt token) per scored position, on the device."""
    lp = logits.float().log_softmax(dim=-1)
    tok_lp = lp.gather(1, targets.unsqueeze(1))
    ranks = (lp > tok_lp).sum(dim=-1) + 1
    ids, vals = targets.unsqueeze(1), tok_lp
    if k > 0:
        top_lp, top_ids = lp.topk(k, dim=-1)
        ids, vals = torch.cat([ids, top_ids], 1), torch.cat([vals, top_lp], 1)
    return ids, vals, ranks
