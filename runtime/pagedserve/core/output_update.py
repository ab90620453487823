"""After the forward pass: the scheduler appends each request's sampled token, checks its stop
conditions (EOS, stop tokens, length), reports new tokens and prompt logprobs as
``EngineCoreOutput``s, frees finished requests and steps beam groups once all their beams sampled.
A speculative verify step brings several tokens for one request (``spec``): they are appended in
order until one ends the request; the rest are dropped."""
from __future__ import annotations

import logging

from pagedserve.core.scheduler_output import EngineCoreOutput, SchedulerOutput
from pagedserve.request import Request, RequestStatus

logger = logging.getLogger("pagedserve.core.scheduler")


class OutputUpdateMixin:
    """The after-the-step part of :class:`~pagedserve.core.scheduler.Scheduler` (uses its ``kv``,
    ``_dequeue``, ``_free``, ``_length_capped`` and the beam-group step)."""

    def update_from_output(self, sched: SchedulerOutput, sampled: dict[str, int],
                           logprobs: dict[str, object] | None = None,
                           prompt_logprobs: dict[str, list] | None = None,
                           spec: dict[str, tuple[list[int], list | None]] | None = None) -> list[EngineCoreOutput]:
        """``spec``: request id → (tokens, their logprob entries or None) of a verify step (speculative
        decoding: the accepted drafts and the target's next token)."""
        outputs: list[EngineCoreOutput] = self.take_errored() if self._errored else []
        logprobs = logprobs or {}
        prompt_logprobs = prompt_logprobs or {}
        beam_groups: dict[int, Request] = {}
        caching = self.kv.enable_caching
        for s in sched.scheduled:
            req = s.request
            leader = req.beam_leader
            if leader is not None:  # one beam of a beam group: the group steps once all beams sampled
                if not leader.is_finished and req in leader.beam.beams:
                    self.kv.cache_full_blocks(req)
                    if s.do_sample:
                        beam_groups[id(leader)] = leader
                continue
            if req.is_finished:
                continue
            new_tokens: list[int] = []
            lps: list | None = None
            if s.spec_token_ids:
                tokens, spec_lps = spec[req.request_id] if spec and req.request_id in spec else ([], None)
                if tokens:
                    self._apply_spec_result(req, len(s.spec_token_ids), tokens)
                for token in tokens:
                    req.append_output_token(token)
                    new_tokens.append(token)
                    self._check_stop(req, token)
                    if req.is_finished:
                        break
                if spec_lps is not None:
                    lps = spec_lps[:len(new_tokens)]
            elif s.do_sample and req.request_id in sampled:
                token = sampled[req.request_id]
                req.append_output_token(token)
                new_tokens.append(token)
                if req.grammar is not None:
                    self._advance_grammar(req, token)
                self._check_stop(req, token)
            plp = self._new_prompt_logprobs(req, prompt_logprobs.get(req.request_id))
            if not new_tokens and plp is None:
                continue
            if lps is None:
                lp = logprobs.get(req.request_id)
                lps = [lp] if lp is not None else None
            outputs.append(EngineCoreOutput(
                req.request_id, new_tokens, req.status.finish_reason, req.stop_reason,
                lps, plp, req.num_cached_tokens))
            if req.is_finished:
                if caching:  # (blocks completed by tokens that were in flight when it was scheduled)
                    self.kv.cache_full_blocks(req)
                self._dequeue(req)
                self._free(req)
        for leader in beam_groups.values():
            outputs.extend(self._beam_step(leader, logprobs))
        return outputs

    @staticmethod
    def _new_prompt_logprobs(req: Request, scored: tuple[int, list] | None) -> list | None:
        """Keep prompt logprobs not reported before (a recomputed request scores them again)."""
        if scored is None:
            return None
        first, entries = scored
        fresh = entries[max(0, len(req.prompt_logprobs) + 1 - first):]
        req.prompt_logprobs.extend(fresh)
        return fresh or None

    @staticmethod
    def _advance_grammar(req: Request, token: int) -> None:
        """Structured output: the matcher accepts the token (the bitmask allowed only such tokens);
        a terminated grammar (its stop token accepted) ends the request."""
        g = req.grammar
        if g.num_accepted != req.num_output_tokens - 1:  # catch up (never expected: the matcher is per request)
            g.replay(req.output_token_ids[:-1])
        if not g.accept(token) or g.is_terminated:
            if not g.is_terminated:
                logger.warning("request %s: token %d does not fit its grammar; stopping it", req.request_id, token)
            req.status, req.stop_reason = RequestStatus.FINISHED_STOPPED, None

    def _check_stop(self, req: Request, token: int) -> None:
        if req.is_finished:
            return
        sp = req.sampling_params
        if req.num_output_tokens >= sp.min_tokens:
            if not sp.ignore_eos and token in req.eos_token_ids:
                req.status, req.stop_reason = RequestStatus.FINISHED_STOPPED, None
                return
            if token in sp.stop_token_ids:
                req.status, req.stop_reason = RequestStatus.FINISHED_STOPPED, token
                return
        if self._length_capped(req.num_output_tokens, req.max_tokens, req.num_tokens):
            req.status = RequestStatus.FINISHED_LENGTH_CAPPED
