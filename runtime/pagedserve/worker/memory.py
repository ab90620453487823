"""GPU memory budget for the KV cache: ``gpu_memory_utilization`` of the card minus weights,
the activation peak of a profiling forward pass at the largest batch, and memory held outside
torch's allocator (CUDA context, other processes)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from pagedserve.config import GiB
from pagedserve.forward_context import ForwardContext, set_forward_context

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
    with set_forward_context(ForwardContext(None, [], runner.backend)):
        hidden = runner.model(ids, pos)
    rows = min(sc.max_num_seqs, n)
    logits = runner.model.compute_logits(hidden[:rows]).float()
    probs = logits.softmax(-1)
    probs.sort(dim=-1)  # top-k/top-p sorts the full vocabulary
    del hidden, logits, probs


def profile_kv_budget(runner: "ModelRunner", utilization: float) -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    profile_run(runner)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    free, total = torch.cuda.mem_get_info()
    non_torch = total - free - torch.cuda.memory_reserved()
    torch.cuda.empty_cache()
    budget = int(total * utilization - peak - max(non_torch, 0) - 256 * (1 << 20))
    logger.info("memory: total %.1f GiB x %.2f; peak torch %.2f GiB (weights + activations), "
                "outside torch %.2f GiB -> KV budget %.2f GiB", total / GiB, utilization, peak / GiB,
                non_torch / GiB, budget / GiB)
    return budget
