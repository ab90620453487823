"""Preemption in the scheduler: which running unit gives way (the last admitted, or with the priority
policy one whose key is strictly worse than a waiting request's), and how — recompute (free the
blocks, restart from prompt + generated tokens) or swap (copy the blocks to the CPU pool). ``auto``
swaps when CPU room is free and recomputing would redo at least ``auto_swap_min_tokens`` tokens (with
prefix caching: only the tokens no other request shares); a beam group always swaps."""
from __future__ import annotations

import logging

from pagedserve.core.scheduler_output import ScheduledRequest, SchedulerOutput
from pagedserve.request import Request, RequestStatus

logger = logging.getLogger("pagedserve.core.scheduler")  # preemption lines keep the scheduler's logger name


class PreemptionMixin:
    """The preemption part of :class:`~pagedserve.core.scheduler.Scheduler` (uses its ``kv``, queues
    and counters)."""

    def _priority_victim(self, req: Request) -> Request | None:
        """With the priority policy: the running unit to preempt for waiting ``req`` (strictly worse key)."""
        if self.policy != "priority" or not self.running:
            return None
        victim = self.running[-1]
        if victim.sort_key <= req.sort_key:
            return None
        new_cached = self._step_cached.get(id(victim))
        if new_cached:  # requests admitted after it this step may already read blocks it computes now
            own: dict[int, int] = {}
            for seq in self._seqs(victim):
                for b in self.kv.req_to_blocks.get(seq.request_id, []):
                    own[b.block_id] = own.get(b.block_id, 0) + 1
            if any(b.ref_cnt > own.get(b.block_id, 0) for b in new_cached):
                return None
        return victim

    def _preemption_mode(self, req: Request, seqs: list[Request]) -> str:
        mode = self.config.preemption_mode
        computed = sum(s.num_computed_tokens for s in seqs)
        if mode == "recompute" or computed == 0 or not self.kv.can_swap_out(seqs):
            return "recompute"
        if mode == "swap" or req.beam is not None:  # a beam group would restart its whole search
            return "swap"
        redo = sum(self.kv.num_exclusive_tokens(s) for s in seqs) if self.kv.enable_caching else computed
        return "swap" if redo >= self.config.auto_swap_min_tokens else "recompute"

    def preempt_request(self, request_id: str, mode: str | None = None) -> bool:
        """Preempt a running request now, outside a step (tests, operators); its block ops run with the
        next step. ``mode``: "recompute" or "swap" (falls back to recompute without CPU room)."""
        req = self.requests.get(request_id)
        if req is None or req.status != RequestStatus.RUNNING:
            return False
        self._preempt(req, SchedulerOutput(), {}, mode)
        return True

    def _preempt(self, victim: Request, out: SchedulerOutput, planned: dict[int, list[ScheduledRequest]],
                 mode: str | None = None) -> int:
        """Preempt a running unit; returns the tokens it had been given this step (now free again)."""
        self.running.remove(victim)
        refund = 0
        if self.encoder.held:  # its images: this step's references undone, the others released
            self._encoder_release(victim)
        entries = planned.pop(id(victim), None)
        self.kv.uncache_blocks(self._step_cached.pop(id(victim), []))  # their KV will not be computed
        if entries:
            drop = {id(e) for e in entries}
            out.scheduled = [s for s in out.scheduled if id(s) not in drop]
            refund = sum(e.num_tokens for e in entries)
        seqs = self._seqs(victim)
        victim.spec_token_ids = []  # drafts for a step that will not run
        if mode is None:
            mode = self._preemption_mode(victim, seqs)
        elif mode == "swap" and not self.kv.can_swap_out(seqs):
            mode = "recompute"
        tokens = sum(s.num_computed_tokens for s in seqs)
        if mode == "swap":
            self.kv.swap_out(seqs)
            victim.status = RequestStatus.SWAPPED
        else:
            for s in seqs:
                self.kv.free(s)
                s.num_computed_tokens = s.num_draft_computed_tokens = 0
            if victim.beam is not None:  # restart the search (deterministic: same result)
                victim.beam.reset()
                victim.beam.beams = [self._new_beam_seq(victim)]
            victim.status = RequestStatus.PREEMPTED
        victim.num_preemptions += 1
        self.num_preemptions += 1
        self.num_preemptions_by_mode[mode] += 1
        self.waiting.push_front(victim)
        out.preempted_ids.append(victim.request_id)
        logger.info("request %s preempted (mode=%s, %d tokens %s, preemption #%d of this request)",
                    victim.request_id, mode, tokens, "swapped to CPU" if mode == "swap" else "to recompute",
                    victim.num_preemptions)
        return refund
