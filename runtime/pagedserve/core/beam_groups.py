"""Beam groups in the scheduler: a beam-search request runs as a group of sequences (the live beams)
that step together; after each step the group keeps the best candidates (``core/beam_search.py``),
forking a beam's blocks copy-on-write when one parent continues in several beams."""
from __future__ import annotations

import itertools

from pagedserve.core.beam_search import BeamSearchState
from pagedserve.core.scheduler_output import EngineCoreOutput
from pagedserve.request import Request, RequestStatus, child_request_id
from pagedserve.sampling_params import SamplingParams


class BeamGroupsMixin:
    """The beam-group part of :class:`~pagedserve.core.scheduler.Scheduler` (uses its ``kv``)."""

    def _start_beam_group(self, req: Request) -> None:
        sp = req.sampling_params
        stop = set(sp.stop_token_ids) | (set() if sp.ignore_eos else set(req.eos_token_ids))
        st = BeamSearchState(sp.num_beams, sp.n, sp.length_penalty, sp.early_stopping, req.max_tokens, stop)
        st.seq_params = SamplingParams(temperature=0.0, logprobs=st.num_candidates, max_tokens=None, ignore_eos=True)
        st.seq_ids = itertools.count()
        req.beam = st
        st.beams = [self._new_beam_seq(req)]

    def _new_beam_seq(self, leader: Request) -> Request:
        st = leader.beam
        seq = Request(f"{leader.request_id}#beam{next(st.seq_ids)}", leader.prompt_token_ids, st.seq_params,
                      arrival_time=leader.arrival_time, priority=leader.priority, max_tokens=leader.max_tokens,
                      cache_salt=leader.cache_salt, lora_request=leader.lora_request,
                      mm_features=leader.mm_features)  # the prompt's images (vision-language models)
        seq.beam_leader = leader
        return seq

    def _beam_step(self, leader: Request, logprobs: dict[str, object]) -> list[EngineCoreOutput]:
        st = leader.beam
        beams = st.beams
        if any(b.request_id not in logprobs for b in beams):
            return []
        topk = []
        for b in beams:
            ids, lps, _ = logprobs[b.request_id]  # type: ignore[misc]
            topk.append((ids[1:], lps[1:]))  # entry 0 is the sampled (argmax) token
        sel = st.step(topk, [b.output_token_ids for b in beams])
        if sel.done:
            return self._finish_beam_group(leader)
        used: set[int] = set()
        plan = []
        for p, token in sel.next_beams:  # fork before any parent appends its own new token
            parent = beams[p]
            if p in used:
                seq = parent.fork(f"{leader.request_id}#beam{next(st.seq_ids)}")
                self.kv.fork(parent, seq, parent.num_computed_tokens)
            else:
                used.add(p)
                seq = parent
            plan.append((seq, token))
        for seq, token in plan:
            seq.append_output_token(token)
        for p, b in enumerate(beams):
            if p not in used:
                self.kv.free(b)
        st.beams = [seq for seq, _ in plan]
        return []

    def _finish_beam_group(self, leader: Request) -> list[EngineCoreOutput]:
        st = leader.beam
        hyps = st.results()
        parent, n = (leader.child_of[0], leader.child_of[2]) if leader.child_of else (leader.request_id, 1)
        outputs = []
        for i in range(n):
            h = hyps[i] if i < len(hyps) else None
            outputs.append(EngineCoreOutput(
                child_request_id(parent, i, n), h.token_ids if h else [], h.finish_reason if h else "length",
                None, None, None, leader.num_cached_tokens, cumulative_logprob=h.cumulative_logprob if h else None))
        leader.status = (RequestStatus.FINISHED_STOPPED if hyps and hyps[0].finish_reason == "stop"
                         else RequestStatus.FINISHED_LENGTH_CAPPED)
        self.running.remove(leader)
        self._free(leader)
        return outputs
