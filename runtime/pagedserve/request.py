"""A request as the engine core sees it: token ids, progress and status."""
from __future__ import annotations

import enum
import time
from typing import Any

import torch

from pagedserve.lora.request import LoRARequest
from pagedserve.multimodal.inputs import MultiModalFeature
from pagedserve.sampling_params import SamplingParams


def child_request_id(request_id: str, index: int, n: int) -> str:
    """The engine-core id of child ``index`` of a request with ``n`` children (n > 1 or beam search)."""
    return request_id if n == 1 else f"{index}_{request_id}"


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    SWAPPED = 3
    FINISHED_STOPPED = 10
    FINISHED_LENGTH_CAPPED = 11
    FINISHED_ABORTED = 12

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return {RequestStatus.FINISHED_STOPPED: "stop", RequestStatus.FINISHED_LENGTH_CAPPED: "length",
                RequestStatus.FINISHED_ABORTED: "abort"}.get(self)


class Request:
    """Prompt + generated tokens; ``num_computed_tokens`` of them have KV in the cache."""

    def __init__(self, request_id: str, prompt_token_ids: list[int], sampling_params: SamplingParams,
                 eos_token_ids: list[int] | None = None, arrival_time: float | None = None,
                 priority: int = 0, max_tokens: int | None = None, cache_salt: str | None = None,
                 lora_request: LoRARequest | None = None,
                 mm_features: "list[MultiModalFeature] | None" = None) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(self.prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_ids = set(eos_token_ids or [])
        self.arrival_time = time.time() if arrival_time is None else arrival_time
        self.priority = priority
        self.max_tokens = max_tokens if max_tokens is not None else sampling_params.max_tokens
        self.all_token_ids: list[int] = list(self.prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.num_computed_tokens = 0
        # tokens sampled by a step still in flight (async scheduling): counted, ids not known yet
        self.num_output_placeholders = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache
        self.num_preemptions = 0
        self.status = RequestStatus.WAITING
        self.stop_reason: int | str | None = None
        self.generator: torch.Generator | None = None  # set by the runner for seeded requests
        self.output_logprobs: list[Any] = []
        self.prompt_logprobs: list[Any] = []
        self.events: dict[str, float] = {"arrival": self.arrival_time}
        # -- memory features (core/) --
        self.cache_salt = cache_salt if cache_salt is not None else sampling_params.cache_salt
        self.lora_request = lora_request  # the adapter it runs with (None: the base model)
        self.block_hashes: list[bytes] = []  # chained hashes of the full blocks (prefix caching)
        # images of the prompt (multimodal/inputs.py), by placeholder offset; their hashes key the blocks
        self.mm_features: list[MultiModalFeature] = sorted(mm_features or [], key=lambda f: f.offset)
        # (parent request id, index, n, "sample" | "beam") for the children of an n > 1 / beam request
        self.child_of: tuple[str, int, int, str] | None = getattr(sampling_params, "child_of", None)
        self.beam: Any = None  # BeamSearchState on the request that runs a beam group
        self.beam_leader: Request | None = None  # on a beam's sequence: the request that owns the group
        self.sort_key: tuple = ()  # scheduling order (core/request_queue.py)
        # structured output: this request's grammar matcher (structured_output/request_grammar.py)
        self.grammar: Any = None
        # speculative decoding: draft tokens proposed for the next step (not part of all_token_ids until
        # verified), and why speculation is off for this request (None: on; core/spec_decode.py)
        self.spec_token_ids: list[int] = []
        self.spec_disabled_reason: str | None = None
        self.num_draft_computed_tokens = 0  # a draft model's KV in the cache: positions below this (worker/draft_proposer.py)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)
        if self.num_output_placeholders:
            self.num_output_placeholders -= 1

    def fork(self, request_id: str) -> "Request":
        """A copy of this sequence's tokens and progress under a new id (beam search); the KV blocks
        are shared separately by the KV cache manager (reference counts)."""
        child = Request.__new__(Request)
        child.__dict__.update(self.__dict__)
        child.request_id = request_id
        child.all_token_ids = list(self.all_token_ids)
        child.output_token_ids = list(self.output_token_ids)
        child.block_hashes = list(self.block_hashes)
        child.output_logprobs, child.prompt_logprobs = [], []
        child.events = dict(self.events)
        child.spec_token_ids = []
        return child

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, prompt={self.num_prompt_tokens}, out={self.num_output_tokens}, "
                f"computed={self.num_computed_tokens}, {self.status.name})")
