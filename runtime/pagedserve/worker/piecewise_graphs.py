"""Piecewise CUDA graphs for prefill and mixed steps: everything between two attention calls is
one captured graph per token-count bucket; attention itself (whose work depends on the batch's
request layout) runs eagerly between the replays. A step of T tokens costs L + 1 graph replays
and L eager attention calls instead of ~12 kernel launches per layer.

Static buffers shared by all buckets carry the values across the cuts: token ids and positions
in; q/k/v and the residual out of a piece; the attention output into the next piece; the final
hidden states out of the last piece. Padding tokens (T_real..T) compute garbage rows that are
never read, and never touch the KV cache (attention only sees the real tokens).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from pagedserve.attention.metadata import AttentionMetadata

if TYPE_CHECKING:
    from pagedserve.worker.input_batch import HostInput
    from pagedserve.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)

#: token-count buckets, about 12% apart at most: a mixed step of a decode batch plus one prompt
#: (e.g. 35 + 250 tokens) pads to 288, not 384 - padding is computed, and these steps are compute-bound
BUCKETS = (tuple(range(16, 257, 16)) + tuple(range(288, 513, 32)) + tuple(range(576, 1025, 64))
           + tuple(range(1152, 2049, 128)))


def supports_piecewise(model: nn.Module) -> bool:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return layers is not None and all(hasattr(layer, "pre_attention") for layer in layers)


class PiecewiseCUDAGraphs:
    def __init__(self, runner: "ModelRunner", max_tokens: int, use_graphs: bool = True) -> None:
        self.runner = runner
        self.use_graphs = use_graphs  # False: run the pieces eagerly (tests the plumbing on CPU)
        self.inner = runner.model.model
        self.layers = self.inner.layers
        self.buckets = [b for b in BUCKETS if b <= max(16, max_tokens)]
        self.max_tokens = self.buckets[-1]
        attn = self.layers[0].self_attn
        dev, dt, n = runner.device, runner.mc.dtype, self.max_tokens
        hidden = runner.mc.arch.hidden_size
        self.heads, self.kv_heads, self.head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        self.input_ids = torch.zeros(n, dtype=torch.long, device=dev)
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)
        self.q = torch.zeros(n, self.heads, self.head_dim, dtype=dt, device=dev)
        self.k = torch.zeros(n, self.kv_heads, self.head_dim, dtype=dt, device=dev)
        self.v = torch.zeros(n, self.kv_heads, self.head_dim, dtype=dt, device=dev)
        self.residual = torch.zeros(n, hidden, dtype=dt, device=dev)
        self.attn_out = torch.zeros(n, self.heads * self.head_dim, dtype=dt, device=dev)
        self.hidden = torch.zeros(n, hidden, dtype=dt, device=dev)
        self.graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}
        self.capture_seconds = 0.0

    def _piece(self, i: int, t: int) -> None:
        """Piece i: the end of layer i-1 (after its attention) and the start of layer i (before it)."""
        if i == 0:
            x, res = self.inner.embed_tokens(self.input_ids[:t]), None
        else:
            x, res = self.layers[i - 1].post_attention(self.attn_out[:t], self.residual[:t])
        if i == len(self.layers):
            h, _ = self.inner.norm(x, res)
            self.hidden[:t].copy_(h)
            return
        q, k, v, res = self.layers[i].pre_attention(self.positions[:t], x, res)
        self.q[:t].copy_(q)
        self.k[:t].copy_(k)
        self.v[:t].copy_(v)
        self.residual[:t].copy_(res)

    @torch.inference_mode()
    def capture(self) -> None:
        t0 = time.perf_counter()
        pool = None
        torch.cuda.synchronize()
        for t in reversed(self.buckets):
            for i in range(len(self.layers) + 1):  # warm-up (kernel compilation, cuBLAS heuristics)
                self._piece(i, t)
            torch.cuda.synchronize()
            graphs = []
            for i in range(len(self.layers) + 1):
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool):
                    self._piece(i, t)
                pool = g.pool()
                graphs.append(g)
            self.graphs[t] = graphs
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0
        logger.info("captured piecewise CUDA graphs for %d token buckets (up to %d tokens, %d pieces each) "
                    "in %.1f s", len(self.buckets), self.max_tokens, len(self.layers) + 1, self.capture_seconds)

    def can_run(self, h: "HostInput") -> bool:
        return h.num_tokens <= self.max_tokens

    def run(self, h: "HostInput", input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
            ) -> torch.Tensor:
        """Hidden states [T_real, hidden] for the step (a view of a static buffer)."""
        t_real = h.num_tokens
        t = next(b for b in self.buckets if b >= t_real)
        self.input_ids[:t_real].copy_(input_ids)
        self.positions[:t_real].copy_(positions)
        r = self.runner
        pieces = self.graphs[t] if self.use_graphs else None
        q, k, v = self.q[:t_real], self.k[:t_real], self.v[:t_real]
        out = self.attn_out[:t_real].view(t_real, self.heads, self.head_dim)  # attention writes in place
        for i in range(len(self.layers) + 1):
            if pieces is not None:
                pieces[i].replay()
            else:
                self._piece(i, t)
            if i < len(self.layers):
                k_cache, v_cache = r.kv_caches[i]
                self.layers[i].self_attn.attn.attend(r.backend, q, k, v, k_cache, v_cache, meta, out=out)
        return self.hidden[:t_real]
