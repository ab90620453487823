"""Engine configuration: what to load, how much KV cache, how to schedule.

An :class:`EngineConfig` of small dataclasses that the rest of the engine reads. It is made from
the flat, user-facing ``EngineArgs`` (``engine/arg_utils.py``: the CLI flags and ``LLM(...)``
keywords, named as in vLLM), which validates them and resolves the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pagedserve.arch_config import ArchConfig

GiB = 1 << 30


#: --kv-cache-dtype values (vLLM's names) and the cache's element type; None = the model dtype
KV_CACHE_DTYPES: dict[str, torch.dtype | None] = {"auto": None, "fp8": torch.float8_e4m3fn,
                                                   "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


@dataclass
class ModelConfig:
    model: str  # the HF directory actually loaded
    served_model_name: str
    arch: ArchConfig
    dtype: torch.dtype
    max_model_len: int
    load_format: str = "auto"
    seed: int = 0
    generation_config: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    quantization: str | None = None  # the method (layers/quantization): --quantization or the checkpoint's
    quant_config: dict[str, Any] | None = None  # config.json's quantization_config, when the checkpoint has one
    tokenizer: str | None = None  # the tokenizer directory (--tokenizer, resolved); None: the model's


@dataclass
class CacheConfig:
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    kv_cache_memory: int | None = None  # bytes; the budget on CPU, an explicit size on GPU
    num_gpu_blocks_override: int | None = None
    swap_space: float = 4.0  # GiB of pinned CPU memory for swapped-out blocks
    enable_prefix_caching: bool = True  # measured: < 1% host overhead at 0% hits (docs/memory.md)
    num_gpu_blocks: int | None = None  # resolved by the model runner
    num_cpu_blocks: int | None = None
    cache_dtype: str = "auto"  # --kv-cache-dtype: auto (the model dtype), fp8 / fp8_e4m3, fp8_e5m2
    #: the window of a model whose every layer is windowed (Mistral): blocks left of it are freed
    sliding_window: int | None = None

    def torch_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        """The KV cache's element type."""
        return KV_CACHE_DTYPES[self.cache_dtype] or model_dtype


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 2048
    long_prefill_token_threshold: int = 0  # 0 = no per-request cap besides the budget
    policy: str = "fcfs"
    max_waiting_requests: int | None = None
    preemption_mode: str = "recompute"
    priority_aging_interval: float = 10.0  # seconds of waiting worth one priority level (0 = no aging)
    auto_swap_min_tokens: int = 64  # preemption_mode=auto: swap when this many tokens would be recomputed


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1


@dataclass
class LoRAConfig:
    """Multi-LoRA serving (``--enable-lora``; docs/lora.md)."""

    max_loras: int = 1  # adapters on the GPU at once (slots); one step runs at most this many
    max_lora_rank: int = 16  # the largest adapter rank accepted (slots are sized for it)
    max_cpu_loras: int | None = None  # adapters kept in CPU memory (LRU); None: max_loras


@dataclass
class EngineConfig:
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    parallel_config: ParallelConfig
    device: str
    enforce_eager: bool = False
    attention_backend: str = "auto"
    async_scheduling: bool = False
    lora_config: LoRAConfig | None = None  # None: LoRA off
