"""CUDA graphs for decode steps: the model forward and the LM head for one token per request,
captured once at startup for padded batch-size buckets and replayed every decode step.

Static input buffers hold token ids, positions, slot mapping, seq lens and block tables; a
step copies its rows in (padding rows get slot -1: no KV write, and seq_len 1) and replays the
smallest graph that fits. Mixed prefill/decode steps run eagerly.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from pagedserve.attention.metadata import AttentionMetadata
from pagedserve.forward_context import ForwardContext, set_forward_context
from pagedserve.worker.input_batch import gather_input_ids
from pagedserve.utils import cdiv

if TYPE_CHECKING:
    from pagedserve.worker.input_batch import HostInput
    from pagedserve.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def capture_sizes(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 1025, 32))
    return [s for s in sizes if s <= max_batch] or [1]


def bucket_for(sizes: list[int], num_reqs: int) -> int:
    """The smallest captured batch size that holds ``num_reqs`` rows (``sizes`` ascending)."""
    return next(s for s in sizes if s >= num_reqs)


def _host(t: torch.Tensor, pin: bool) -> torch.Tensor:
    return t.pin_memory() if pin else t


class DecodeCUDAGraphs:
    def __init__(self, runner: "ModelRunner", max_batch: int) -> None:
        self.runner = runner
        self.sizes = capture_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        dev = runner.device
        mc = runner.mc
        self.max_blocks = cdiv(mc.max_model_len, runner.block_size)
        n = self.max_batch
        self.input_ids = torch.zeros(n, dtype=torch.long, device=dev)
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=dev)
        self.block_tables = torch.zeros((n, self.max_blocks), dtype=torch.int32, device=dev)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=dev)
        # pinned host staging, two sets: with async scheduling the copies of step N may still be
        # queued when step N+1 fills its staging buffers
        pin = torch.device(dev).type == "cuda"
        self.staging = [dict(ids=_host(torch.zeros(n, dtype=torch.long), pin),
                             pos=_host(torch.zeros(n, dtype=torch.long), pin),
                             slots=_host(torch.zeros(n, dtype=torch.long), pin),
                             lens=_host(torch.zeros(n, dtype=torch.int32), pin),
                             tables=_host(torch.zeros(n * self.max_blocks, dtype=torch.int32), pin))
                        for _ in range(2)]
        self.num_runs = 0
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.capture_seconds = 0.0

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs], query_start_loc=self.query_start_loc[:bs + 1],
            seq_lens=self.seq_lens[:bs], block_tables=self.block_tables[:bs], max_query_len=1,
            max_seq_len=self.runner.mc.max_model_len, num_decodes=bs, num_prefill_tokens=0)

    def _forward(self, bs: int) -> torch.Tensor:
        r = self.runner
        with set_forward_context(ForwardContext(self._meta(bs), r.kv_caches, r.backend)):
            hidden = r.model(self.input_ids[:bs], self.positions[:bs])
        return r.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        t0 = time.perf_counter()
        pool = None
        torch.cuda.synchronize()
        for bs in reversed(self.sizes):  # largest first: smaller graphs reuse its memory pool
            self._forward(bs)  # warm-up (Triton compilation, cuBLAS heuristics)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self.logits[bs] = self._forward(bs)
            pool = g.pool()
            self.graphs[bs] = g
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0
        logger.info("captured %d decode CUDA graphs (batch 1..%d) in %.1f s", len(self.sizes), self.max_batch,
                    self.capture_seconds)

    def can_run(self, h: "HostInput") -> bool:
        return h.is_pure_decode and h.num_reqs <= self.max_batch and h.block_tables.shape[1] <= self.max_blocks

    def run(self, h: "HostInput", prev_sampled: torch.Tensor | None = None) -> torch.Tensor:
        """Replay the decode graph for ``h``; returns logits [B, vocab] (a view of a static buffer)."""
        bs = self.prepare(h, prev_sampled)
        self.graphs[bs].replay()
        return self.logits[bs][:h.num_reqs]

    def prepare(self, h: "HostInput", prev_sampled: torch.Tensor | None = None) -> int:
        """Copy ``h``'s rows into the static input buffers (through the next staging set) and pad up
        to the bucket; returns the bucket's batch size."""
        b = h.num_reqs
        bs = bucket_for(self.sizes, b)
        w = h.block_tables.shape[1]
        st = self.staging[self.num_runs % 2]
        self.num_runs += 1
        st["ids"].numpy()[:b] = h.input_ids
        st["pos"].numpy()[:b] = h.positions
        st["slots"].numpy()[:b] = h.slot_mapping
        st["lens"].numpy()[:b] = h.seq_lens
        st["tables"].numpy()[:b * w].reshape(b, w)[:] = h.block_tables
        self.input_ids[:b].copy_(st["ids"][:b], non_blocking=True)
        if h.src_rows is not None:
            self.input_ids[:b] = gather_input_ids(self.input_ids[:b], h.src_rows, prev_sampled)
        self.positions[:b].copy_(st["pos"][:b], non_blocking=True)
        self.slot_mapping[:b].copy_(st["slots"][:b], non_blocking=True)
        self.seq_lens[:b].copy_(st["lens"][:b], non_blocking=True)
        self.block_tables[:b, :w].copy_(st["tables"][:b * w].view(b, w), non_blocking=True)
        if bs > b:
            self.slot_mapping[b:bs].fill_(-1)
            self.seq_lens[b:bs].fill_(1)
        return bs
