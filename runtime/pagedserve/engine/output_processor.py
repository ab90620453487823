"""Engine-core outputs → ``RequestOutput``s: detokenization, stop strings, logprobs, and
gathering the ``n`` child requests of a parallel-sampling request into one output.

It runs where the tokenizer lives (the HTTP process when serving), so the engine core only
moves token ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagedserve.core.scheduler_output import EngineCoreOutput
from pagedserve.engine.detokenizer import IncrementalDetokenizer
from pagedserve.request import child_request_id  # noqa: F401  (re-exported: the frontends import it here)
from pagedserve.outputs import CompletionOutput, Logprob, RequestOutput
from pagedserve.sampling_params import SamplingParams


@dataclass
class _ChildState:
    index: int
    params: SamplingParams
    detok: IncrementalDetokenizer | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    sent_tokens: int = 0


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: dict[str, _ChildState]
    prompt_logprobs: list | None = None
    num_cached_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        for c in self.children.values():  # a plain loop: this runs for every output of every step
            if c.finish_reason is None:
                return False
        return True


class OutputProcessor:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.states: dict[str, RequestState] = {}
        self.child_to_parent: dict[str, str] = {}

    def add_request(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                    params: SamplingParams, child_params: dict[str, SamplingParams]) -> None:
        children = {}
        for idx, (cid, cp) in enumerate(child_params.items()):
            detok = IncrementalDetokenizer(self.tokenizer, prompt_token_ids, cp) if self.tokenizer else None
            children[cid] = _ChildState(idx, cp, detok, logprobs=[] if cp.logprobs is not None else None,
                                        cumulative_logprob=0.0 if cp.logprobs is not None else None)
            self.child_to_parent[cid] = request_id
        self.states[request_id] = RequestState(
            request_id, prompt, prompt_token_ids, params, children,
            prompt_logprobs=[None] if params.prompt_logprobs is not None else None)

    def abort_requests(self, request_ids: list[str]) -> list[str]:
        """Forget requests; return the engine-core (child) ids to abort."""
        out = []
        for rid in request_ids:
            st = self.states.pop(rid, None)
            if st is None:
                continue
            for cid in st.children:
                self.child_to_parent.pop(cid, None)
                out.append(cid)
        return out

    def has_unfinished_requests(self) -> bool:
        return bool(self.states)

    def process_outputs(self, outputs: list[EngineCoreOutput]) -> tuple[list[RequestOutput], list[str]]:
        """Return the RequestOutputs to report and the child ids stopped by a stop string."""
        touched: dict[str, RequestState] = {}
        stopped: list[str] = []
        for o in outputs:
            parent = self.child_to_parent.get(o.request_id)
            if parent is None:
                continue
            st = self.states[parent]
            child = st.children[o.request_id]
            st.num_cached_tokens = o.num_cached_tokens
            if o.new_prompt_logprobs and st.prompt_logprobs is not None and child.index == 0:
                st.prompt_logprobs.extend(self._lp_dicts(o.new_prompt_logprobs))
            self._update_child(child, o)
            if child.finish_reason is not None and o.finish_reason is None:
                stopped.append(o.request_id)  # stop string: the core must stop it too
            touched[parent] = st
        results = []
        for rid, st in touched.items():
            out = self._make_output(st)
            if out is not None:
                results.append(out)
            if st.finished:
                del self.states[rid]
                for cid in st.children:
                    self.child_to_parent.pop(cid, None)
        return results, stopped

    def _update_child(self, child: _ChildState, o: EngineCoreOutput) -> None:
        if child.finish_reason is not None:
            return
        child.token_ids.extend(o.new_token_ids)
        if o.cumulative_logprob is not None:  # a beam-search result
            child.cumulative_logprob = o.cumulative_logprob
        if o.new_logprobs and child.logprobs is not None:
            dicts = self._lp_dicts(o.new_logprobs)
            child.logprobs.extend(dicts)
            for tok, d in zip(o.new_token_ids, dicts):
                child.cumulative_logprob = (child.cumulative_logprob or 0.0) + d[tok].logprob
        if child.detok is not None:
            sp = child.params
            text_ids = o.new_token_ids
            if o.finish_reason == "stop" and text_ids and not sp.include_stop_str_in_output:
                text_ids = text_ids[:-1]  # ended by EOS / a stop token id: its text is not output (as vLLM)
            hit = child.detok.update(text_ids, check_stop=len(child.token_ids) > sp.min_tokens)
            if hit is not None:
                child.finish_reason, child.stop_reason = "stop", hit
                extra = len(o.new_token_ids) - child.detok.stop_index - 1  # tokens after the stop string's last
                if extra > 0:  # (several tokens in one step: speculative decoding)
                    if o.new_logprobs and child.logprobs is not None:
                        for tok, d in zip(child.token_ids[-extra:], child.logprobs[-extra:]):
                            child.cumulative_logprob = (child.cumulative_logprob or 0.0) - d[tok].logprob
                        del child.logprobs[-extra:]
                    del child.token_ids[-extra:]
                return
        if o.finish_reason is not None:
            child.finish_reason, child.stop_reason = o.finish_reason, o.stop_reason

    def _lp_dicts(self, entries: list) -> list[dict[int, Logprob]]:
        dicts = []
        for ids, lps, rank in entries:
            d: dict[int, Logprob] = {}
            for j, (tid, lp) in enumerate(zip(ids, lps)):
                if tid in d:
                    continue
                d[tid] = Logprob(lp, rank if j == 0 else j, self._decode_one(tid))
            dicts.append(d)
        return dicts

    def _decode_one(self, token_id: int) -> str | None:
        if self.tokenizer is None:
            return None
        return self.tokenizer.convert_tokens_to_string([self.tokenizer.convert_ids_to_tokens(token_id)])

    def _make_output(self, st: RequestState) -> RequestOutput | None:
        kind = st.params.output_kind
        finished = st.finished
        if kind == "final" and not finished:
            return None
        outs = []
        children = st.children.values()
        for child in (children if len(st.children) == 1 else sorted(children, key=lambda c: c.index)):
            done = child.finish_reason is not None
            if kind == "delta":
                text = child.detok.delta(done) if child.detok else ""
                toks = child.token_ids[child.sent_tokens:]
                lps = child.logprobs[child.sent_tokens:] if child.logprobs is not None else None
                child.sent_tokens = len(child.token_ids)
            else:
                text = child.detok.visible_text(done) if child.detok else ""
                toks, lps = list(child.token_ids), child.logprobs
            outs.append(CompletionOutput(child.index, text, toks, child.cumulative_logprob, lps,
                                         child.finish_reason, child.stop_reason))
        return RequestOutput(st.request_id, st.prompt, st.prompt_token_ids, outs, finished,
                             st.prompt_logprobs, st.num_cached_tokens, st.metrics)
