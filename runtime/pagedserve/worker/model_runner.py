"""The model runner: owns the model, the KV cache and the sampler; runs one scheduled step."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from pagedserve.attention.backend import get_attention_backend
from pagedserve.config import GiB, EngineConfig
from pagedserve.core.scheduler_output import SchedulerOutput
from pagedserve.forward_context import ForwardContext, set_forward_context
from pagedserve.layers.sampler import Sampler
from pagedserve.models.loader import build_model
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


class ModelRunner:
    def __init__(self, config: EngineConfig, use_tqdm: bool = True) -> None:
        self.config = config
        self.mc = config.model_config
        self.device = torch.device(config.device)
        self.block_size = config.cache_config.block_size
        self.model = build_model(self.mc, config.device, use_tqdm=use_tqdm)
        self.backend = get_attention_backend(config.attention_backend, config.device)
        if self.backend.name == "triton":
            self.backend.max_seq_len_bound = self.mc.max_model_len  # static split rule (CUDA graphs)
        if self.device.type == "cuda" and config.attention_backend != "torch":
            from pagedserve.worker.fusion import install_fused_kernels

            install_fused_kernels(self.model)
        self.sampler = Sampler()
        self.kv_cache: torch.Tensor | None = None
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.graphs = None  # DecodeCUDAGraphs once captured

    # -- KV cache -----------------------------------------------------------------------------
    def kv_block_bytes(self) -> int:
        arch = self.mc.arch
        tp = self.config.parallel_config.tensor_parallel_size
        kv_heads = max(1, arch.num_kv_heads // tp)
        elem = torch.tensor([], dtype=self.mc.dtype).element_size()
        return 2 * arch.num_layers * self.block_size * kv_heads * arch.head_dim * elem

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
        shape = (arch.num_layers, 2, num_blocks, self.block_size, max(1, arch.num_kv_heads // tp), arch.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.mc.dtype, device=self.device)
        self.kv_caches = [(self.kv_cache[i, 0], self.kv_cache[i, 1]) for i in range(arch.num_layers)]
        logger.info("KV cache: %d blocks x %d tokens = %d tokens (%.2f GiB)", num_blocks, self.block_size,
                    num_blocks * self.block_size, self.kv_cache.numel() * self.kv_cache.element_size() / GiB)

    def capture_cuda_graphs(self) -> float:
        """Capture decode graphs (CUDA, unless enforce_eager); returns the capture time in seconds."""
        if self.device.type != "cuda" or self.config.enforce_eager:
            return 0.0
        from pagedserve.worker.cuda_graphs import DecodeCUDAGraphs

        self.graphs = DecodeCUDAGraphs(self, self.config.scheduler_config.max_num_seqs)
        self.graphs.capture()
        return self.graphs.capture_seconds

    # -- one step -----------------------------------------------------------------------------
    def _logits(self, h: HostInput) -> torch.Tensor:
        if self.graphs is not None and self.graphs.can_run(h):
            return self.graphs.run(h)
        inp = to_device(h, self.device)
        with set_forward_context(ForwardContext(inp.attn_metadata, self.kv_caches, self.backend)):
            hidden = self.model(inp.input_ids, inp.positions)
        return self.model.compute_logits(hidden[inp.logits_indices])

    @torch.inference_mode()
    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        if sched.block_ops:  # copy-on-write block copies and swaps first (worker/block_ops.py)
            self.block_ops.apply(sched.block_ops)
        out = ModelRunnerOutput()
        if sched.is_empty:
            return out
        h = prepare_inputs(sched.scheduled, self.block_size)
        if len(h.logits_indices) == 0:
            inp = to_device(h, self.device)  # a prefill chunk that samples nothing: fill the cache only
            with set_forward_context(ForwardContext(inp.attn_metadata, self.kv_caches, self.backend)):
                self.model(inp.input_ids, inp.positions)
            return out
        # sampling inputs go to the device before the forward pass is queued: no sync in between
        reqs = [sched.scheduled[i].request for i, _ in h.sample_rows]
        meta = build_sampling_metadata(reqs, self.mc.arch.vocab_size, self.device) if reqs else None
        logits = self._logits(h).float()
        if meta is not None:
            rows = [r for _, r in h.sample_rows]
            so = self.sampler(logits if rows == list(range(len(logits))) else logits[rows], meta)
            tokens = so.sampled.tolist()  # the step's one host sync
            for req, tok in zip(reqs, tokens):
                out.sampled[req.request_id] = tok
            if so.logprobs is not None:
                ids, lps, ranks = so.logprob_token_ids.tolist(), so.logprobs.tolist(), so.sampled_ranks.tolist()
                for row, req in enumerate(reqs):
                    k = req.sampling_params.logprobs
                    if k is not None:
                        out.logprobs[req.request_id] = (ids[row][:k + 1], lps[row][:k + 1], ranks[row])
        for i, first, count, first_index in h.prompt_lp_rows:
            s = sched.scheduled[i]
            req = s.request
            targets = torch.tensor(req.all_token_ids[s.start + 1:s.start + 1 + count], device=self.device)
            out.prompt_logprobs[req.request_id] = (first_index, _prompt_logprobs(
                logits[first:first + count], targets, req.sampling_params.prompt_logprobs or 0))
        return out


def _prompt_logprobs(logits: torch.Tensor, targets: torch.Tensor, k: int
                     ) -> list[tuple[list[int], list[float], int]]:
    lp = logits.log_softmax(dim=-1)
    tok_lp = lp.gather(1, targets.unsqueeze(1))
    ranks = ((lp > tok_lp).sum(dim=-1) + 1).tolist()
    ids, vals = targets.unsqueeze(1), tok_lp
    if k > 0:
        top_lp, top_ids = lp.topk(k, dim=-1)
        ids, vals = torch.cat([ids, top_ids], 1), torch.cat([vals, top_lp], 1)
    return list(zip(ids.tolist(), vals.tolist(), ranks))
