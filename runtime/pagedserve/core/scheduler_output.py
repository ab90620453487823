"""What the scheduler hands the model runner for one step (plain data, no tensors)."""
from __future__ import annotations

from dataclasses import dataclass, field

from pagedserve.request import Request


@dataclass
class ScheduledRequest:
    request: Request
    num_tokens: int  # tokens to compute this step
    start: int  # position of the first of them (= num_computed_tokens before this step)
    block_ids: list[int]
    do_sample: bool  # this step reaches the end of the known tokens: sample the next one
    # speculative decoding: draft tokens verified this step; they are the last len(spec_token_ids) of the
    # num_tokens computed (after the request's last known token), and the step samples 1 + k tokens
    spec_token_ids: list[int] = field(default_factory=list)

    @property
    def token_ids(self) -> list[int]:
        n_known = self.num_tokens - len(self.spec_token_ids)
        known = self.request.all_token_ids[self.start:self.start + n_known]
        return known + self.spec_token_ids if self.spec_token_ids else known


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted_ids: list[str] = field(default_factory=list)
    total_num_scheduled_tokens: int = 0
    # KV block operations to run before the forward pass, in this order (worker/block_ops.py):
    # ("copy", src gpu block, dst gpu block)   copy-on-write of a shared block
    # ("swap_out", gpu block, cpu block)        preemption by swap
    # ("swap_in", cpu block, gpu block)         resuming a swapped request
    block_ops: list[tuple[str, int, int]] = field(default_factory=list)
    # vision-language models (core/encoder_cache_manager.py): the images whose encoder outputs this step
    # computes (hashes; every other image its chunks read is in the worker's cache), their rows, and the
    # cache entries to drop before the step (evicted by the scheduler)
    encoder_mm_hashes: list[str] = field(default_factory=list)
    num_encoder_tokens: int = 0
    free_encoder_mm_hashes: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @property
    def blocks_to_copy(self) -> list[tuple[int, int]]:
        return [(a, b) for kind, a, b in self.block_ops if kind == "copy"]

    @property
    def blocks_to_swap_out(self) -> list[tuple[int, int]]:
        return [(a, b) for kind, a, b in self.block_ops if kind == "swap_out"]

    @property
    def blocks_to_swap_in(self) -> list[tuple[int, int]]:
        return [(a, b) for kind, a, b in self.block_ops if kind == "swap_in"]


@dataclass
class EngineCoreOutput:
    """One request's progress after a step."""

    request_id: str
    new_token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    new_logprobs: list | None = None
    new_prompt_logprobs: list | None = None
    num_cached_tokens: int = 0
    cumulative_logprob: float | None = None  # set on the final outputs of a beam search

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
