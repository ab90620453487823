"""The scheduler's side of the encoder cache (vLLM's ``EncoderCacheManager``): which images' encoder
outputs the worker holds, who still needs them, and how much encoder work a step may do.

Capacity and the per-step compute budget are counted in encoder output rows (an image's placeholder
tokens). An entry is *referenced* by every request whose next chunks still read it (from the step
that first covers one of its placeholders until the request's computed tokens pass it, or it is
preempted / finished); an entry nobody references stays in the worker's cache as *freeable* (a hit
for a later request with the same image) and is evicted, oldest first, only when a new image needs
its room. The evicted hashes go down to the worker with the step (``SchedulerOutput
.free_encoder_mm_hashes``), so the worker's dict (``worker/encoder_cache.py``) holds exactly the
entries counted here.
"""
from __future__ import annotations

from collections import OrderedDict

from pagedserve.multimodal.inputs import MultiModalFeature


class EncoderCacheManager:
    def __init__(self, compute_budget: int | None, cache_size: int | None, default_budget: int) -> None:
        # None: vLLM's default, the token budget, raised to the largest image seen (an image is encoded whole)
        self.auto_budget, self.auto_size = compute_budget is None, cache_size is None
        self.compute_budget = compute_budget if compute_budget is not None else (
            min(default_budget, cache_size) if cache_size is not None else default_budget)
        self.cache_size = cache_size if cache_size is not None else self.compute_budget
        self.sizes: dict[str, int] = {}  # hash → rows of every entry the worker holds
        self.refs: dict[str, set[str]] = {}  # hash → ids of requests that still read it
        self.freeable: OrderedDict[str, None] = OrderedDict()  # unreferenced entries, oldest first
        self.num_used = 0  # rows of all entries (referenced or freeable)
        self.held: dict[str, set[str]] = {}  # request id → hashes it references
        self.freed: list[str] = []  # evicted since the last take_freed()
        self.queries = self.hits = 0  # (request, image) lookups and those served from the cache
        self.num_encoder_tokens = 0  # rows scheduled for encoding, cumulative
        self.begin_step()

    # -- admission ---------------------------------------------------------------------------
    def check_item(self, length: int) -> None:
        """An image of ``length`` rows must fit one step's budget and the cache (ValueError naming the
        flag); with the defaults they grow to fit it, as vLLM sizes them for the largest item."""
        if length > self.compute_budget:
            if not self.auto_budget:
                raise ValueError(f"multi_modal_data: an image of {length} tokens is larger than "
                                 f"max_num_encoder_input_tokens={self.compute_budget} "
                                 "(--max-num-encoder-input-tokens); raise it or send smaller images")
            self.compute_budget = length
        if length > self.cache_size:
            if not self.auto_size:
                raise ValueError(f"multi_modal_data: an image of {length} tokens is larger than "
                                 f"encoder_cache_size={self.cache_size} (--encoder-cache-size); raise it")
            self.cache_size = length

    # -- one step ----------------------------------------------------------------------------
    def begin_step(self) -> None:
        self.budget_left = self.compute_budget
        self.step_new: dict[str, int] = {}  # hash → rows, entries allocated (to be encoded) this step
        self.step_taken: dict[str, list[tuple[str, bool]]] = {}  # request id → (hash, hit) referenced this step

    def end_step(self) -> None:
        """The step is handed out: its references and new entries are final (nothing to roll back)."""
        self.step_new = {}
        self.step_taken = {}

    def holds(self, req_id: str, mm_hash: str) -> bool:
        return mm_hash in self.held.get(req_id, ())

    def acquire(self, req_id: str, f: MultiModalFeature) -> bool:
        """Reference ``f``'s encoder output for this request: a hit if cached, else a new entry if the
        step's budget and the cache (after evicting freeable entries) have room. False: neither."""
        h = f.mm_hash
        if self.holds(req_id, h):
            return True
        if h in self.sizes:  # computed before, or by another request of this step: no work of its own
            self._ref(req_id, h, True)
            self.queries += 1
            self.hits += 1
            return True
        if f.length > self.budget_left or f.length > self.cache_size - self.num_used + self._freeable_rows():
            return False
        while self.num_used + f.length > self.cache_size:
            old, _ = self.freeable.popitem(last=False)
            self.num_used -= self.sizes.pop(old)
            self.refs.pop(old, None)
            self.freed.append(old)
        self.sizes[h] = f.length
        self.num_used += f.length
        self.budget_left -= f.length
        self.step_new[h] = f.length
        self.num_encoder_tokens += f.length
        self._ref(req_id, h, False)
        self.queries += 1
        return True

    def _freeable_rows(self) -> int:
        return sum(self.sizes[h] for h in self.freeable)

    def _ref(self, req_id: str, h: str, hit: bool) -> None:
        self.refs.setdefault(h, set()).add(req_id)
        self.freeable.pop(h, None)
        self.held.setdefault(req_id, set()).add(h)
        self.step_taken.setdefault(req_id, []).append((h, hit))

    def _unref(self, req_id: str, h: str) -> None:
        held = self.held.get(req_id)
        if held is not None:
            held.discard(h)
            if not held:
                del self.held[req_id]
        refs = self.refs.get(h)
        if refs is None:
            return
        refs.discard(req_id)
        if not refs:
            del self.refs[h]
            self.freeable[h] = None

    def rollback(self, req_id: str) -> None:
        """Undo this step's references of a request that will not run this step after all; an entry
        allocated this step that nobody else references is dropped (the worker never encodes it)."""
        for h, hit in reversed(self.step_taken.pop(req_id, [])):
            self._unref(req_id, h)
            self.queries -= 1
            self.hits -= hit
            if h in self.step_new:
                if h in self.refs:  # another request of this step reads it: it is still encoded
                    continue
                rows = self.step_new.pop(h)
                self.freeable.pop(h, None)
                del self.sizes[h]
                self.num_used -= rows
                self.budget_left += rows
                self.num_encoder_tokens -= rows

    def release_passed(self, req_id: str, features: list[MultiModalFeature], num_computed: int) -> None:
        """Drop the request's references to images whose placeholders are all computed (the last
        placeholder of every occurrence of the same image)."""
        held = self.held.get(req_id)
        if not held:
            return
        last_end: dict[str, int] = {}
        for f in features:
            if f.mm_hash in held:
                last_end[f.mm_hash] = max(last_end.get(f.mm_hash, 0), f.end)
        for h, end in last_end.items():
            if end <= num_computed:
                self._unref(req_id, h)

    def release_all(self, req_id: str) -> None:
        """A finished or preempted request reads nothing any more (its images stay cached, freeable)."""
        self.step_taken.pop(req_id, None)
        for h in list(self.held.get(req_id, ())):
            self._unref(req_id, h)

    def take_freed(self) -> list[str]:
        out, self.freed = self.freed, []
        return out

    @property
    def usage(self) -> float:
        """Fraction of the cache holding outputs some request still needs (freeable ones not counted)."""
        if not self.cache_size:
            return 0.0
        return sum(self.sizes[h] for h in self.refs) / self.cache_size
