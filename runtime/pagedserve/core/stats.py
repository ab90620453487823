"""Scheduler statistics the metrics layer reads after each step."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SchedulerStats:
    num_running: int = 0
    num_waiting: int = 0
    num_swapped: int = 0
    kv_cache_usage: float = 0.0  # fraction of GPU blocks in use
    cpu_cache_usage: float = 0.0  # fraction of swap blocks in use
    num_preemptions_total: int = 0  # cumulative
    prefix_cache_queries_total: int = 0  # cumulative, in tokens
    prefix_cache_hits_total: int = 0  # cumulative, in tokens
    num_gpu_blocks: int = 0
    block_size: int = 16
    num_cpu_blocks: int = 0
    num_preemptions_recompute_total: int = 0  # cumulative, by mode (sum = num_preemptions_total)
    num_preemptions_swap_total: int = 0
    num_blocks_swapped_out_total: int = 0  # cumulative, in blocks
    num_blocks_swapped_in_total: int = 0
    num_cow_copies_total: int = 0  # copy-on-write block copies, cumulative
    prefix_cache_evictions_total: int = 0  # cached blocks reused for other content, cumulative
    # LoRA (vLLM's lora_requests_info): adapter name → requests running / waiting with it
    running_lora_adapters: dict[str, int] = field(default_factory=dict)
    waiting_lora_adapters: dict[str, int] = field(default_factory=dict)
    # speculative decoding (vLLM's spec_decode_* counters), cumulative: verify steps with drafts, draft
    # tokens, accepted draft tokens, and accepted drafts per draft position
    spec_num_drafts_total: int = 0
    spec_num_draft_tokens_total: int = 0
    spec_num_accepted_tokens_total: int = 0
    spec_num_accepted_tokens_per_pos_total: list[int] = field(default_factory=list)
    # vision-language models (vLLM's mm_cache_* counters, in items): (request, image) lookups of the
    # encoder cache and those served from it; fraction of encoder_cache_size still needed by a request;
    # image tokens scheduled for encoding, cumulative
    mm_cache_queries_total: int = 0
    mm_cache_hits_total: int = 0
    encoder_cache_usage: float = 0.0
    num_encoder_tokens_total: int = 0

    @property
    def spec_acceptance_rate(self) -> float | None:
        """Accepted / drafted tokens since the start (None before any draft)."""
        d = self.spec_num_draft_tokens_total
        return self.spec_num_accepted_tokens_total / d if d else None
