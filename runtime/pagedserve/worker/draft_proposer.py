"""``method: draft_model``: a smaller model with the target's tokenizer proposes ``k`` tokens
greedily after every step that sampled. Its layers' KV live in the same KV cache tensor as the
target's (extra layers of one pool: the same blocks, block tables and slot mapping; block copies and
swaps move them along), so the scheduler's block accounting covers both and nothing can leak.

After a step, for each request that may speculate, the draft first catches up over the tokens whose
draft KV is not in the cache yet (the prompt the first time, then the accepted tokens and the new
one; positions from ``min(Request.num_draft_computed_tokens, step start)``, since blocks past the
target's computed tokens are trimmed), which gives the first draft token; then ``k - 1`` one-token
steps give the others. The scheduler allocated ``k`` slots of lookahead for these writes
(``core/spec_decode.py``); a request without that room (just swapped back in) proposes nothing this
step. Drafts travel to the scheduler on ``Request.spec_token_ids``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pagedserve.config import ModelConfig
from pagedserve.core.scheduler_output import ScheduledRequest, SchedulerOutput
from pagedserve.forward_context import ForwardContext, set_forward_context
from pagedserve.models.loader import build_model
from pagedserve.sampling_params import SamplingParams
from pagedserve.worker.input_batch import prepare_inputs, to_device

if TYPE_CHECKING:
    from pagedserve.worker.model_runner import ModelRunner, ModelRunnerOutput

_PLAIN = SamplingParams()


class _DraftSeq:
    """What ``prepare_inputs`` reads of a request: its id and tokens (here with the step's new ones)."""

    def __init__(self, request_id: str, token_ids: list[int]) -> None:
        self.request_id = request_id
        self.all_token_ids = token_ids
        self.num_prompt_tokens = len(token_ids)
        self.sampling_params = _PLAIN
        self.lora_request = None  # the draft model runs without adapters
        self.mm_features: tuple = ()  # nor images: it drafts from the text tokens


class DraftModelProposer:
    def __init__(self, runner: "ModelRunner", mc: ModelConfig, num_speculative_tokens: int) -> None:
        self.runner = runner
        self.k = num_speculative_tokens
        self.num_layers = mc.arch.num_layers
        self.model = build_model(mc, runner.config.device, use_tqdm=False)
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []  # set with the KV cache

    @torch.inference_mode()
    def propose(self, sched: SchedulerOutput, out: "ModelRunnerOutput", handle: object = None) -> None:
        bs = self.runner.block_size
        reqs, ctxs, tables, starts = [], [], [], []
        for s in sched.scheduled:
            req = s.request
            rid = req.request_id
            if (not s.do_sample or req.spec_disabled_reason is not None or req.beam_leader is not None
                    or req.is_finished):
                continue
            new = out.spec[rid][0] if rid in out.spec else ([out.sampled[rid]] if rid in out.sampled else [])
            ctx = req.all_token_ids + new
            if not new or len(s.block_ids) * bs < len(ctx) + self.k - 1:
                req.spec_token_ids = []
                continue
            reqs.append(req)
            ctxs.append(ctx)
            tables.append(s.block_ids)
            starts.append(min(req.num_draft_computed_tokens, s.start))
        if not reqs:
            return
        drafts: list[list[int]] = [[] for _ in reqs]
        entries = [ScheduledRequest(_DraftSeq(r.request_id, c), len(c) - st, st, t, True)  # type: ignore[arg-type]
                   for r, c, t, st in zip(reqs, ctxs, tables, starts)]
        for j in range(self.k):
            for d, tok in zip(drafts, self._forward(entries)):
                d.append(tok)
            if j + 1 < self.k:
                entries = [ScheduledRequest(_DraftSeq(r.request_id, c + d), 1, len(c) + j, t, True)  # type: ignore[arg-type]
                           for r, c, t, d in zip(reqs, ctxs, tables, drafts)]
        for r, c, d in zip(reqs, ctxs, drafts):
            r.spec_token_ids = d
            r.num_draft_computed_tokens = len(c)

    def _forward(self, entries: list[ScheduledRequest]) -> list[int]:
        """One draft forward over ``entries``; the greedy next token of each, in entry order."""
        runner = self.runner
        h = prepare_inputs(entries, runner.block_size)
        inp = to_device(h, runner.device)
        with set_forward_context(ForwardContext(inp.attn_metadata, self.kv_caches, runner.backend)):
            hidden = self.model(inp.input_ids, inp.positions)
        ids = self.model.compute_logits(hidden[inp.logits_indices]).argmax(dim=-1).tolist()
        out = [0] * len(entries)
        for i, row in h.sample_rows:
            out[i] = ids[row]
        return out
