"""Scheduler statistics the metrics layer reads after each step."""
from __future__ import annotations

from dataclasses import dataclass


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
