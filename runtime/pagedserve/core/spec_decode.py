"""Speculative decoding in the scheduler: which requests may speculate, the draft tokens of a decode
step (n-gram prompt lookup here), and applying a verify step's result — the accepted drafts plus one
token from the target, the rejected drafts' KV positions rolled back (``num_computed_tokens``) and
blocks that now hold only rejected positions freed — with vLLM's acceptance counters.

A decoding request with ``k`` drafts is scheduled for ``1 + k`` tokens (its last known token and the
drafts) in one target forward; the worker's rejection sampler (``layers/rejection_sampler.py``) returns
``a + 1`` tokens (``a`` accepted drafts, then the target's own token at the first rejection or the bonus
token after the last draft). docs/speculative_decoding.md has the whole flow.
"""
from __future__ import annotations

import logging

from pagedserve.config import SPEC_WORKER_METHODS, SpeculativeConfig
from pagedserve.core.ngram_proposer import NgramProposer
from pagedserve.request import Request

logger = logging.getLogger("pagedserve.core.scheduler")


def spec_disabled_reason(req: Request) -> str | None:
    """Why a request cannot speculate (its per-token sampling state would differ inside a draft run),
    or None. These requests decode one token per step as without speculation."""
    sp = req.sampling_params
    if sp.use_beam_search:
        return "beam search"
    if sp.repetition_penalty != 1.0 or sp.presence_penalty != 0.0 or sp.frequency_penalty != 0.0:
        return "repetition / presence / frequency penalties (they count each drafted token)"
    if sp.min_tokens > 0:
        return "min_tokens (the stop-token ban changes inside a draft run)"
    if sp.bad_words_token_ids:
        return "bad_words (the ban depends on the preceding tokens)"
    if sp.structured_outputs is not None:
        return "structured output (the grammar advances token by token)"
    return None


class SpecDecodeMixin:
    """The speculative part of :class:`~pagedserve.core.scheduler.Scheduler`."""

    def _init_spec(self, spec: SpeculativeConfig | None) -> None:
        self.spec_config = spec
        self.proposer = (NgramProposer(spec.num_speculative_tokens, spec.prompt_lookup_min, spec.prompt_lookup_max)
                         if spec is not None and spec.method == "ngram" else None)
        k = spec.num_speculative_tokens if spec is not None else 0
        # a draft model / EAGLE head runs in the worker right after a step samples, writing its KV up to
        # k - 1 positions past the request's tokens: those steps allocate k slots of lookahead
        self.spec_lookahead = k if spec is not None and spec.method in SPEC_WORKER_METHODS else 0
        self.spec_num_drafts = self.spec_num_draft_tokens = self.spec_num_accepted_tokens = 0  # cumulative
        self.spec_accepted_per_pos = [0] * k
        self._spec_reasons_logged: set[str] = set()

    def _spec_admit(self, req: Request) -> None:
        if self.spec_config is None:
            return
        reason = spec_disabled_reason(req)
        req.spec_disabled_reason = reason
        if reason is not None:
            log = logger.info if reason not in self._spec_reasons_logged else logger.debug
            self._spec_reasons_logged.add(reason)
            log("request %s: speculative decoding off for it (%s)", req.request_id, reason)

    def _spec_active(self) -> bool:
        """Drafting this step at all (off while the batch exceeds ``disable_by_batch_size``)."""
        spec = self.spec_config
        if spec is None:
            return False
        limit = spec.disable_by_batch_size
        return limit is None or len(self.running) + len(self.waiting) <= limit

    def _lookahead(self, req: Request) -> int:
        return self.spec_lookahead if req.spec_disabled_reason is None and self.spec_config is not None else 0

    def _draft_tokens(self, req: Request, budget: int) -> list[int]:
        """Draft tokens for a decoding request's next step, at most ``budget - 1`` and never more than
        the request can still emit (``max_tokens``, ``max_model_len`` / cache capacity) minus one."""
        drafts, req.spec_token_ids = req.spec_token_ids, []  # proposed by the worker (a draft model): used once
        if req.spec_disabled_reason is not None or req.num_output_placeholders:
            return []
        room = min(budget - 1, req.max_tokens - req.num_output_tokens - 1, self.capacity - req.num_tokens - 1)
        if room <= 0:
            return []
        if drafts:
            return drafts[:room]
        if self.proposer is None:
            return []
        return self.proposer.propose(req.all_token_ids, room)

    def _apply_spec_result(self, req: Request, num_drafts: int, tokens: list[int]) -> None:
        """After a verify step: roll the rejected drafts' positions back and count the acceptance."""
        accepted = len(tokens) - 1
        rejected = num_drafts - accepted
        if rejected:
            req.num_computed_tokens -= rejected
            self.kv.trim(req)
        self.spec_num_drafts += 1
        self.spec_num_draft_tokens += num_drafts
        self.spec_num_accepted_tokens += accepted
        per_pos = self.spec_accepted_per_pos
        for j in range(accepted):
            per_pos[j] += 1
