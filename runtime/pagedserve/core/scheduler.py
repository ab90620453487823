"""Continuous batching with chunked prefill under one token budget, with priorities, preemption by
swap or recompute, prefix caching, copy-on-write forks and beam groups.

Every step hands out up to ``max_num_batched_tokens`` tokens: running requests first (usually one
decode token each, or their next prefill chunk), then waiting ones in queue order (arrival, or
priority with aging: ``core/request_queue.py``) while ``max_num_seqs`` allows. When the pool runs out
of blocks the last running request (the latest admitted; with the priority policy, the one with the
worst priority key) is preempted — by recompute (blocks freed, restart from prompt + generated
tokens) or by swap (blocks copied to the CPU pool, brought back later), per ``preemption_mode``. With
the priority policy, a waiting request that cannot get blocks (or a sequence slot) also preempts
running requests whose key is strictly worse than its own.

A request is a *unit* of one or more sequences: a plain request is one sequence; a beam-search
request runs a beam group (``core/beam_search.py``) whose live beams are the sequences. The children
of an ``n > 1`` request are separate requests, but a fresh child waits until the first child has
prefilled the prompt and then *forks* it: it shares the prompt's blocks (reference counts) and only
computes the last prompt token itself, copying the shared partial block on that first write.
"""
from __future__ import annotations

import bisect
import itertools
import logging

from pagedserve.config import CacheConfig, SchedulerConfig, SpeculativeConfig
from pagedserve.core.beam_groups import BeamGroupsMixin
from pagedserve.core.encoder_scheduling import EncoderSchedulingMixin
from pagedserve.core.kv_cache_manager import KVCacheManager
from pagedserve.core.output_update import OutputUpdateMixin
from pagedserve.core.preemption import PreemptionMixin
from pagedserve.core.request_queue import make_queue, priority_key
from pagedserve.core.scheduler_output import EngineCoreOutput, ScheduledRequest, SchedulerOutput
from pagedserve.core.spec_decode import SpecDecodeMixin
from pagedserve.core.stats import SchedulerStats
from pagedserve.request import Request, RequestStatus, child_request_id
from pagedserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

_WAIT = object()  # a fresh n > 1 child whose first sibling has not prefilled the prompt yet


def start_samples(req: Request, n: int) -> bool:
    """Computing ``n`` more known tokens of ``req`` reaches its end (the step samples)."""
    return req.num_computed_tokens + n == req.num_tokens + req.num_output_placeholders


class Scheduler(OutputUpdateMixin, PreemptionMixin, BeamGroupsMixin, SpecDecodeMixin, EncoderSchedulingMixin):
    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig, num_blocks: int,
                 num_cpu_blocks: int = 0, max_loras: int | None = None,
                 speculative_config: SpeculativeConfig | None = None) -> None:
        self.config = scheduler_config
        # LoRA: the running requests use at most this many distinct adapters (the GPU slots)
        self.max_loras = max_loras
        self.policy = scheduler_config.policy
        self.kv = KVCacheManager(num_blocks, cache_config.block_size, cache_config.enable_prefix_caching,
                                 num_cpu_blocks, sliding_window=cache_config.sliding_window)
        self.requests: dict[str, Request] = {}
        self.waiting = make_queue(self.policy)
        self.running: list[Request] = []
        self.beam_placeholders: dict[str, list[Request]] = {}  # beam leader id → the other children
        self._seq_no = itertools.count()
        self._step_cached: dict[int, list] = {}
        self.num_preemptions = 0
        self.num_preemptions_by_mode = {"recompute": 0, "swap": 0}
        self.prefix_cache_queries = self.prefix_cache_hits = 0  # tokens
        self._errored: list[Request] = []  # requests ended by the core itself, reported by take_errored
        self.num_host_sync_requests = 0  # requests whose params need host tokens every step (async pauses)
        # pipeline parallelism with several batches in flight: a request whose sampled token is still
        # in the pipeline is not scheduled again until it is back (the first stage needs its id)
        self.skip_in_flight = False
        # the most tokens one sequence can hold: the model limit, or the whole cache if smaller
        self.capacity = min(scheduler_config.max_model_len, num_blocks * cache_config.block_size)
        self._init_spec(speculative_config)  # speculative decoding (core/spec_decode.py)
        # vision-language models: encoder cache and per-step encoder budget (core/encoder_cache_manager.py)
        self._init_encoder(scheduler_config)

    # -- admission ----------------------------------------------------------------------------
    def check_fits(self, num_prompt_tokens: int, params: SamplingParams | None = None,
                   max_tokens: int | None = None) -> None:
        """Reject requests that can never run (raise ValueError naming the limit)."""
        max_len = self.config.max_model_len
        if num_prompt_tokens > max_len:
            raise ValueError(f"prompt is {num_prompt_tokens} tokens, longer than max_model_len={max_len}")
        if num_prompt_tokens == 0:
            raise ValueError("prompt is empty: at least one token is needed")
        if not self.kv.can_ever_fit(num_prompt_tokens + 1):
            raise ValueError(f"prompt is {num_prompt_tokens} tokens, more than the whole KV cache holds "
                             f"({self.kv.num_blocks} blocks of {self.kv.block_size} tokens)")
        if params is not None and params.use_beam_search:
            width = params.num_beams
            if width > self.config.max_num_seqs:
                raise ValueError(f"beam_width={width} is larger than max_num_seqs={self.config.max_num_seqs}")
            out = max_tokens if max_tokens is not None else (params.max_tokens or max_len - num_prompt_tokens)
            need = self.kv.blocks_needed(num_prompt_tokens) + width * (self.kv.blocks_needed(out) + 1)
            if need > self.kv.num_blocks:
                raise ValueError(f"beam search with beam_width={width} and max_tokens={out} may need {need} KV "
                                 f"blocks, more than the whole cache holds ({self.kv.num_blocks} blocks)")

    def add_request(self, request: Request) -> None:
        self.check_fits(request.num_prompt_tokens, request.sampling_params, request.max_tokens)
        for f in request.mm_features:
            self.check_mm_item(f.length)
        if request.request_id in self.requests:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        seq_no = next(self._seq_no)
        request.sort_key = (priority_key(request, self.config.priority_aging_interval, seq_no)
                            if self.policy == "priority" else (seq_no,))
        self.requests[request.request_id] = request
        if request.sampling_params.needs_host_tokens:
            self.num_host_sync_requests += 1
        self._spec_admit(request)
        group = request.child_of
        if request.sampling_params.use_beam_search:
            if group is not None and group[1] > 0:  # gets the i-th best hypothesis when the leader finishes
                self.beam_placeholders.setdefault(child_request_id(group[0], 0, group[2]), []).append(request)
                return
            self._start_beam_group(request)
        self.waiting.push(request)

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> list[Request]:
        done = []
        for rid in request_ids:
            req = self.requests.get(rid)
            if req is None or req.is_finished:
                continue
            if req.beam is None and req.sampling_params.use_beam_search:  # a placeholder
                group = self.beam_placeholders.get(child_request_id(req.child_of[0], 0, req.child_of[2]), [])
                if req in group:
                    group.remove(req)
            elif req.status == RequestStatus.RUNNING:
                self.running.remove(req)
            else:
                self.waiting.remove(req)
            req.status = status
            self._free(req)
            done.append(req)
        return done

    # -- units and sequences ------------------------------------------------------------------
    @staticmethod
    def _seqs(req: Request) -> list[Request]:
        return req.beam.beams if req.beam is not None else [req]

    @staticmethod
    def _width(req: Request) -> int:
        return req.beam.width if req.beam is not None else 1

    # -- scheduling ---------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        planned: dict[int, list[ScheduledRequest]] = {}  # id(unit) → its entries this step
        self._step_cached = {}  # id(unit) → blocks it registered in the prefix cache this step
        self.encoder.begin_step()
        running, kv, scheduled = self.running, self.kv, out.scheduled
        num_seqs = len(running) + sum(r.beam.width - 1 for r in running if r.beam is not None)
        cap = self.config.long_prefill_token_threshold
        preempted = False
        speculate = self._spec_active()
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            if req.beam is None:  # the common case, inlined: one sequence
                if req.num_output_placeholders and self.skip_in_flight:
                    i += 1
                    continue
                n = req.num_tokens + req.num_output_placeholders - req.num_computed_tokens
                if req.num_output_placeholders and self._done_in_flight(req):
                    n = 0  # its in-flight token is its last: nothing more to compute
                if 0 < cap < n:
                    n = cap
                if n > budget:
                    n = budget
                if n > 0 and req.mm_features:
                    n = self._encoder_cut(req, req.num_computed_tokens, n)
                if n <= 0:
                    i += 1
                    continue
                drafts = self._draft_tokens(req, budget) if speculate and n == 1 else []
                n += len(drafts)
                ahead = self._lookahead(req) if start_samples(req, n - len(drafts)) else 0
                ids = kv.allocate_slots(req, n + ahead)
                while ids is None:
                    victim = running[-1]
                    self._preempt(victim, out, planned)
                    num_seqs -= self._width(victim)
                    preempted = True
                    if victim is req:
                        break
                    ids = kv.allocate_slots(req, n + ahead)
                if ids is None:
                    break
                start = req.num_computed_tokens
                if kv.enable_caching:
                    new = kv.cache_full_blocks(req, start + n)  # hits for requests admitted after it
                    if new:
                        self._step_cached[id(req)] = new
                entry = ScheduledRequest(req, n, start, list(ids),
                                         start + n - len(drafts) == req.num_tokens + req.num_output_placeholders,
                                         drafts)
                planned[id(req)] = [entry]
                scheduled.append(entry)
                budget -= n
                i += 1
                continue
            plan = self._plan(req, budget)
            if not plan:
                i += 1
                continue
            while not self._allocate(plan):
                victim = self.running[-1]
                self._preempt(victim, out, planned)
                num_seqs -= self._width(victim)
                preempted = True
                if victim is req:
                    break
            if req.status != RequestStatus.RUNNING:
                break
            planned[id(req)] = entries = self._emit(req, plan)
            scheduled.extend(entries)
            budget -= sum(s.num_tokens for s in entries)
            i += 1
        if not preempted:
            skipped: list[Request] = []
            loras = self._running_loras() if self.max_loras else None
            while len(self.waiting) and budget > 0:
                req = self.waiting.peek()
                if req.request_id in out.preempted_ids:
                    break  # just made room for a better request: not back in the same step
                lora = req.lora_request
                if (loras is not None and lora is not None and lora.lora_int_id not in loras
                        and len(loras) >= self.max_loras):  # no free adapter slot: wait for one
                    skipped.append(self.waiting.pop())
                    continue
                if req.grammar is not None and not req.grammar.ready:  # its grammar is still compiling
                    skipped.append(self.waiting.pop())
                    continue
                if req.grammar is not None and req.grammar.error is not None:
                    self.waiting.pop()
                    self._fail(req, req.grammar.error)
                    continue
                fork_src = self._fork_source(req)
                if fork_src is _WAIT:
                    skipped.append(self.waiting.pop())
                    continue
                width = self._width(req)
                entries = None
                self._mm_blocked = False
                if num_seqs + width <= self.config.max_num_seqs:
                    entries = self._admit(req, budget, fork_src)  # type: ignore[arg-type]
                if entries is None and self._mm_blocked:
                    break  # its next image needs encoder budget or cache room: it waits for a later step
                if entries is None:
                    victim = self._priority_victim(req)
                    if victim is None:
                        break
                    budget += self._preempt(victim, out, planned)
                    num_seqs -= self._width(victim)
                    continue
                self.waiting.pop()
                req.status = RequestStatus.RUNNING
                if loras is not None and lora is not None:
                    loras.add(lora.lora_int_id)
                if self.policy == "priority":
                    bisect.insort(self.running, req, key=lambda r: r.sort_key)
                else:
                    self.running.append(req)
                num_seqs += width
                planned[id(req)] = entries
                out.scheduled.extend(entries)
                budget -= sum(s.num_tokens for s in entries)
            for req in reversed(skipped):
                self.waiting.push_front(req)
        self._step_cached = {}
        out.total_num_scheduled_tokens = self.config.max_num_batched_tokens - budget
        out.block_ops = self.kv.take_ops()
        for s in out.scheduled:  # advance now so the next schedule() sees this step's work
            s.request.num_computed_tokens += s.num_tokens
            if s.do_sample:  # its token is a placeholder until update_from_output appends it
                s.request.num_output_placeholders += 1
            if s.request.mm_features:  # images this request has read to the end: no longer needed by it
                self.encoder.release_passed(s.request.request_id, s.request.mm_features,
                                            s.request.num_computed_tokens)
        self._finish_encoder_step(out)
        return out

    def _running_loras(self) -> set[int]:
        return {r.lora_request.lora_int_id for r in self.running if r.lora_request is not None}

    def _fail(self, req: Request, message: str) -> None:
        """End a request the core cannot run (its grammar failed to compile); reported next step."""
        req.status, req.stop_reason = RequestStatus.FINISHED_ABORTED, message
        self._free(req)
        self._errored.append(req)

    def take_errored(self) -> list[EngineCoreOutput]:
        out = [EngineCoreOutput(r.request_id, [], "abort", r.stop_reason) for r in self._errored]
        self._errored = []
        return out

    def _done_in_flight(self, seq: Request) -> bool:
        """The token still in flight will end this sequence by length (async scheduling)."""
        n_out = seq.num_output_tokens + seq.num_output_placeholders
        return self._length_capped(n_out, seq.max_tokens, seq.num_tokens + seq.num_output_placeholders)

    def _length_capped(self, num_output: int, max_tokens: int, num_tokens: int) -> bool:
        return num_output >= max_tokens or num_tokens >= self.capacity

    def _plan(self, unit: Request, budget: int) -> list[tuple[Request, int]]:
        """The tokens each sequence of ``unit`` computes this step. The sequences of a beam group
        sample together: if they cannot all reach their end this step, none does."""
        seqs = self._seqs(unit)
        cap = self.config.long_prefill_token_threshold
        needs = [s.num_tokens + s.num_output_placeholders - s.num_computed_tokens for s in seqs]
        if len(seqs) == 1 and seqs[0].num_output_placeholders and self._done_in_flight(seqs[0]):
            return []  # its in-flight token is its last: nothing more to compute
        if len(seqs) == 1:
            n = min(needs[0], budget, cap) if cap > 0 else min(needs[0], budget)
            if n > 0 and seqs[0].mm_features:
                n = self._encoder_cut(seqs[0], seqs[0].num_computed_tokens, n)
            return [(seqs[0], n)] if n > 0 else []
        if sum(needs) <= budget and (cap <= 0 or max(needs) <= cap):
            return [(s, n) for s, n in zip(seqs, needs) if n > 0]
        plan, left = [], budget
        for s, need in zip(seqs, needs):
            n = min(need - 1, left, cap) if cap > 0 else min(need - 1, left)
            if n > 0:
                plan.append((s, n))
                left -= n
        return plan

    def _allocate(self, plan: list[tuple[Request, int]]) -> bool:
        return all(self.kv.allocate_slots(seq, n) is not None for seq, n in plan)

    def _emit(self, unit: Request, plan: list[tuple[Request, int]]) -> list[ScheduledRequest]:
        out = []
        for seq, n in plan:
            start = seq.num_computed_tokens
            new = self.kv.cache_full_blocks(seq, start + n)  # hits for requests admitted after it
            if new:
                self._step_cached.setdefault(id(unit), []).extend(new)
            out.append(ScheduledRequest(seq, n, start, self.kv.get_block_ids(seq.request_id),
                                        do_sample=start + n == seq.num_tokens + seq.num_output_placeholders))
        return out

    def _fork_source(self, req: Request) -> Request | object | None:
        """For a fresh child of an ``n > 1`` request: the first child to fork from, ``_WAIT`` while it
        is still prefilling, or None (run on its own: first child gone, preempted, or 1-token prompt)."""
        g = req.child_of
        if (g is None or g[3] != "sample" or g[1] == 0 or req.num_output_tokens or req.num_computed_tokens
                or req.status != RequestStatus.WAITING or req.num_prompt_tokens <= 1):
            return None
        leader = self.requests.get(child_request_id(g[0], 0, g[2]))
        if leader is None or leader.is_finished:
            return None
        if leader.status == RequestStatus.RUNNING and leader.num_computed_tokens >= req.num_prompt_tokens - 1:
            # (with a sliding window the leader may have freed blocks the child would still read)
            return leader if self.kv.can_fork(leader, req.num_prompt_tokens - 1) else None
        return _WAIT if leader.num_output_tokens == 0 else None

    def _admit(self, req: Request, budget: int, fork_src: Request | None) -> list[ScheduledRequest] | None:
        """Blocks for a waiting unit's next tokens (swap-in, fork or prefix-cache hits first); None,
        with nothing changed, if the pool is too small right now."""
        if req.status == RequestStatus.SWAPPED:
            plan = self._plan(req, budget)
            if not plan:
                return None
            seqs = self._seqs(req)
            new = dict((id(s), n) for s, n in plan)
            if self.kv.swap_in_blocks_needed(seqs, [new.get(id(s), 0) for s in seqs]) > self.kv.pool.num_free_blocks:
                self._encoder_rollback(req)
                return None
            self.kv.swap_in(seqs)
            ok = self._allocate(plan)
            assert ok, "swap-in admission checked an upper bound on the blocks it needs"
            return self._emit(req, plan)
        if fork_src is not None:
            keep = req.num_prompt_tokens - 1
            if req.mm_features and self._encoder_cut(req, keep, 1) <= 0:
                return None
            self.kv.fork(fork_src, req, keep)
            req.num_computed_tokens = keep
            if self.kv.allocate_slots(req, 1 + self._lookahead(req)) is None:
                self.kv.free(req)
                req.num_computed_tokens = 0
                self._encoder_rollback(req)
                return None
            req.num_cached_tokens = fork_src.num_cached_tokens
            return self._emit(req, [(req, 1)])
        seqs = self._seqs(req)
        assert len(seqs) == 1 and seqs[0].num_computed_tokens == 0
        seq = seqs[0]
        hit = self.kv.get_computed_blocks(seq)
        n_hit = len(hit) * self.kv.block_size
        cap = self.config.long_prefill_token_threshold
        n = min(seq.num_tokens - n_hit, budget, cap) if cap > 0 else min(seq.num_tokens - n_hit, budget)
        if n > 0 and seq.mm_features:
            n = self._encoder_cut(seq, n_hit, n)
        ahead = self._lookahead(seq) if n_hit + n == seq.num_tokens else 0
        if n <= 0 or self.kv.allocate_slots(seq, n + ahead, hit) is None:
            self._encoder_rollback(req)
            return None
        seq.num_computed_tokens = n_hit
        if self.kv.enable_caching:
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += n_hit
        if req.num_preemptions == 0:
            req.num_cached_tokens = n_hit
        return self._emit(req, [(seq, n)])

    def _dequeue(self, req: Request) -> None:
        """Take a request that just finished out of its queue (with async scheduling it may have been
        preempted while its last token was in flight)."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)

    def _free(self, req: Request) -> None:
        if self.encoder.held:
            self._encoder_release(req)
        for seq in self._seqs(req):
            self.kv.free(seq)
        self.kv.free(req)
        self._forget(req)
        if req.beam is not None:
            for ph in self.beam_placeholders.pop(req.request_id, []):
                ph.status = req.status
                self._forget(ph)

    def _forget(self, req: Request) -> None:
        known = self.requests.pop(req.request_id, None)
        if known is not None and known.sampling_params.needs_host_tokens:
            self.num_host_sync_requests -= 1

    # -- state --------------------------------------------------------------------------------
    def has_unfinished_requests(self) -> bool:
        return bool(len(self.waiting) or self.running)

    def get_num_unfinished_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    def set_prefix_caching(self, enabled: bool) -> None:
        """Turn prefix caching on or off at run time (benchmarks); off also forgets free cached blocks."""
        self.kv.enable_caching = self.kv.pool.enable_caching = enabled
        if not enabled:
            self.reset_prefix_cache()

    def reset_prefix_cache(self) -> int:
        """Drop every cached block no request holds (benchmarks; after a model/weights change)."""
        return self.kv.pool.reset_prefix_cache()

    def get_stats(self) -> SchedulerStats:
        kv = self.kv
        return SchedulerStats(
            num_running=len(self.running), num_waiting=len(self.waiting),
            num_swapped=(sum(1 for r in self.waiting if r.status == RequestStatus.SWAPPED)
                         if self.num_preemptions_by_mode["swap"] else 0),
            kv_cache_usage=kv.usage, cpu_cache_usage=kv.cpu_usage, num_preemptions_total=self.num_preemptions,
            prefix_cache_queries_total=self.prefix_cache_queries, prefix_cache_hits_total=self.prefix_cache_hits,
            num_gpu_blocks=kv.num_blocks, block_size=kv.block_size,
            num_cpu_blocks=kv.cpu_pool.num_blocks if kv.cpu_pool is not None else 0,
            num_preemptions_recompute_total=self.num_preemptions_by_mode["recompute"],
            num_preemptions_swap_total=self.num_preemptions_by_mode["swap"],
            num_blocks_swapped_out_total=kv.num_swapped_out, num_blocks_swapped_in_total=kv.num_swapped_in,
            num_cow_copies_total=kv.num_copies, prefix_cache_evictions_total=kv.pool.num_evictions,
            running_lora_adapters=_count_loras(self.running) if self.max_loras else {},
            waiting_lora_adapters=_count_loras(self.waiting) if self.max_loras else {},
            spec_num_drafts_total=self.spec_num_drafts, spec_num_draft_tokens_total=self.spec_num_draft_tokens,
            spec_num_accepted_tokens_total=self.spec_num_accepted_tokens,
            spec_num_accepted_tokens_per_pos_total=list(self.spec_accepted_per_pos),
            mm_cache_queries_total=self.encoder.queries, mm_cache_hits_total=self.encoder.hits,
            encoder_cache_usage=self.encoder.usage, num_encoder_tokens_total=self.encoder.num_encoder_tokens)


def _count_loras(reqs) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reqs:
        if r.lora_request is not None:
            out[r.lora_request.lora_name] = out.get(r.lora_request.lora_name, 0) + 1
    return out

