"""A warm-up pass at startup through the real step path: one full-budget prefill step (eager for
large token counts) and one mixed step (decodes + a prefill chunk), on throw-away blocks, so that
kernel compilation, cuBLAS heuristics and the allocator's first growth happen before the first
request instead of inside it."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from pagedserve.core.scheduler_output import ScheduledRequest, SchedulerOutput
from pagedserve.request import Request
from pagedserve.sampling_params import SamplingParams
from pagedserve.utils import cdiv

if TYPE_CHECKING:
    from pagedserve.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def _batch(runner: "ModelRunner", lens: list[int], decode_ctx: int, num_decodes: int) -> SchedulerOutput:
    """Fake requests: ``num_decodes`` decodes at context ``decode_ctx`` and prefills of ``lens``."""
    bs = runner.block_size
    num_blocks = runner.kv_cache.shape[2]
    sp = SamplingParams(temperature=1.0, max_tokens=1, ignore_eos=True)
    out = SchedulerOutput()
    next_block = 0
    vocab = runner.mc.arch.vocab_size
    for i, n in enumerate([1] * num_decodes + lens):
        total = decode_ctx if i < num_decodes else n
        need = cdiv(total, bs)
        blocks = [(next_block + j) % num_blocks for j in range(need)]
        next_block += need
        req = Request(f"warmup-{i}", [(7 * t + i) % vocab for t in range(total)], sp)
        start = total - n
        out.scheduled.append(ScheduledRequest(req, n, start, blocks, do_sample=True))
    out.total_num_scheduled_tokens = sum(s.num_tokens for s in out.scheduled)
    return out


def warmup(runner: "ModelRunner", execute: Callable[[SchedulerOutput], object]) -> float:
    """``execute``: the executor's ``execute_model`` (every tensor-parallel rank runs the steps)."""
    t0 = time.perf_counter()
    sc, mc = runner.config.scheduler_config, runner.mc
    budget = min(sc.max_num_batched_tokens, mc.max_model_len * 4)
    max_chunk = max(1, min(budget, mc.max_model_len - 1))
    lens = []
    left = budget
    while left > 0 and len(lens) < sc.max_num_seqs:
        lens.append(min(max_chunk, left, 1024))
        left -= lens[-1]
    execute(_batch(runner, lens, 0, 0))  # full-budget prefill
    # mixed steps with decode counts of every split-KV regime (each compiles its own kernel variant)
    ctx = min(256, mc.max_model_len)
    for nd in (1, 2, 4, 8, 16, 32, 64):
        if nd >= sc.max_num_seqs:
            break
        execute(_batch(runner, [max(1, min(budget - nd, max_chunk))], ctx, nd))
    seconds = time.perf_counter() - t0
    logger.info("warm-up steps done in %.2f s", seconds)
    return seconds
