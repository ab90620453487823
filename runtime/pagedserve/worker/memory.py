"""GPU memory budget for the KV cache: ``gpu_memory_utilization`` of the card (this instance's share,
as in vLLM) minus weights, the activation peak of a profiling forward pass at the largest batch, and
what this process holds outside torch's allocator; capped by the free memory
(``worker/kv_budget.py``)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from pagedserve.config import GiB
from pagedserve.forward_context import ForwardContext, set_forward_context
from pagedserve.layers.sampler import SamplingMetadata
from pagedserve.worker.kv_budget import MemorySnapshot, kv_budget

if TYPE_CHECKING:
    from pagedserve.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)


@torch.inference_mode()
def profile_run(runner: "ModelRunner") -> None:
    """One forward pass at ``max_num_batched_tokens`` (attention without a cache) plus logits
    and a sampler pass at ``max_num_seqs`` rows: the activation peak of any real step."""
    sc = runner.config.scheduler_config
    n = sc.max_num_batched_tokens
    ids = torch.zeros(n, dtype=torch.long, device=runner.device)
    pos = torch.arange(n, device=runner.device) % runner.mc.max_model_len
    stage = getattr(runner.model, "stage", None)
    with set_forward_context(ForwardContext(None, [], runner.backend)):
        if stage is None or stage.size == 1:
            hidden = runner.model(ids, pos)
        else:  # a pipeline stage: stand-in activations from the previous stage, no logits unless last
            h = runner.mc.arch.hidden_size
            inter = None if stage.is_first else (torch.zeros(n, h, dtype=runner.mc.dtype, device=runner.device),
                                                 torch.zeros(n, h, dtype=runner.mc.dtype, device=runner.device))
            hidden = runner.model(ids, pos, inter)
            if not stage.is_last:
                return
    rows = min(sc.max_num_seqs, n)
    logits = runner.model.compute_logits(hidden[:rows]).float()
    del hidden
    # the sampler's worst case: temperature, top-k and top-p (full-vocabulary sorts) and logprobs
    dev = runner.device
    meta = SamplingMetadata(temperature=torch.full((rows,), 0.7, device=dev), all_greedy=False,
                            top_k=torch.full((rows,), 50, dtype=torch.int64, device=dev),
                            top_p=torch.full((rows,), 0.9, device=dev), min_p=torch.full((rows,), 0.05, device=dev),
                            max_num_logprobs=20)
    runner.sampler(logits, meta)
    del logits
    if hasattr(runner.model, "embed_images"):
        _profile_vision(runner)


def _profile_vision(runner: "ModelRunner") -> None:
    """A vision-language model: the vision tower on the images that one step's token budget can
    reach (every image it covers is encoded in that step), plus their cache entries."""
    m = runner.model
    per_image = max(1, m.tokens_per_image)  # per encoder item (an image, or one tile of a tiled image)
    sc = runner.config.scheduler_config
    items = runner.config.model_config.limit_mm_per_prompt.get("image", 1) * getattr(m, "max_items_per_image", 1)
    n = min(items * sc.max_num_seqs, sc.max_num_batched_tokens // per_image + 2)
    m.embed_images(**m.dummy_image_inputs(max(n, 1), runner.device))


def mlp_activation_width(arch, tp: int) -> int:
    """Elements per token of the MLP's intermediate activations on one rank: gate and up of the
    dense MLP, or for a Mixture-of-Experts layer each of the top-k experts' activation and output
    row (``kernels/fused_moe.py``) plus a shared expert's gate and up."""
    width = 2 * arch.intermediate_size // tp
    moe = getattr(arch, "moe", None)
    if moe is not None:
        sparse = moe.top_k * (moe.moe_intermediate_size // tp + arch.hidden_size + 2)
        width = max(width, sparse + 2 * moe.shared_expert_intermediate_size // tp)
    return width


def graph_memory_estimate(runner: "ModelRunner") -> int:
    """Memory the CUDA-graph pools keep (allocated after the KV cache, so reserved up front): the
    decode graphs' static logits and activations at the largest batch, and the piecewise graphs'
    activations at their largest token bucket."""
    arch, sc = runner.mc.arch, runner.config.scheduler_config
    elem = torch.tensor([], dtype=runner.mc.dtype).element_size()
    tp = runner.config.parallel_config.tensor_parallel_size
    from pagedserve.worker.cuda_graphs import capture_sizes
    from pagedserve.worker.piecewise_graphs import BUCKETS

    max_bs = capture_sizes(sc.max_num_seqs)[-1]  # the largest captured decode batch
    mlp = mlp_activation_width(arch, tp)
    decode = max_bs * (arch.vocab_size + 4 * arch.hidden_size + mlp) * elem
    tokens = min(sc.max_num_batched_tokens, BUCKETS[-1])
    piecewise = tokens * (6 * arch.hidden_size + mlp) * elem
    return int(decode + piecewise)


def memory_snapshot(device: torch.device | None = None) -> MemorySnapshot:
    free, total = torch.cuda.mem_get_info(device)
    return MemorySnapshot(total=total, free=free, reserved=torch.cuda.memory_reserved(device),
                          allocated=torch.cuda.memory_allocated(device))


def profile_kv_budget(runner: "ModelRunner", utilization: float) -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    profile_run(runner)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    torch.cuda.empty_cache()
    now = memory_snapshot()
    graphs = 0 if runner.config.enforce_eager else graph_memory_estimate(runner)
    start = runner.memory_at_start or now
    budget, warning = kv_budget(start, now, peak, graphs, utilization)
    logger.info("memory: total %.1f GiB x %.2f; peak torch %.2f GiB (weights + activations), "
                "outside torch %.2f GiB (%.2f GiB before loading), CUDA graphs ~%.2f GiB -> KV budget %.2f GiB",
                now.total / GiB, utilization, peak / GiB, now.outside_torch / GiB, start.outside_torch / GiB,
                graphs / GiB, budget / GiB)
    if warning:
        logger.warning("memory: %s", warning)
    return budget
