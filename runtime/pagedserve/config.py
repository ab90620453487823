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
    #: --limit-mm-per-prompt: most items of each modality in one prompt (vision-language models)
    limit_mm_per_prompt: dict[str, int] = field(default_factory=lambda: {"image": 4})
    #: how ``model`` was resolved (models/resolve.resolve_model_dir's arguments: --model, --revision,
    #: --download-dir, --load-format): a rank on another node resolves it again when the directory
    #: is not there (executor/ray_worker.py)
    source: dict[str, Any] | None = None


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
    # vision-language models (core/encoder_cache_manager.py), in encoder output rows (image tokens):
    # encoder work per step and the encoder cache's capacity; None: max_num_batched_tokens, raised to
    # the largest image seen (vLLM's defaults)
    max_num_encoder_input_tokens: int | None = None
    encoder_cache_size: int | None = None
    disable_chunked_mm_input: bool = False  # never split an image's placeholders across steps


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str = "mp"  # "mp": processes on this node; "ray": actors across nodes


#: speculative_config "method" values (vLLM's names)
SPEC_METHODS = ("ngram", "draft_model", "eagle", "eagle3")
#: methods whose drafts come from a model in the worker (a draft model or an EAGLE head over the target's
#: hidden states): they write draft KV past the request's tokens, so steps allocate lookahead slots
SPEC_WORKER_METHODS = ("draft_model", "eagle", "eagle3")
_SPEC_KEYS = ("method", "model", "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max",
              "disable_by_batch_size", "hf_overrides")


@dataclass
class SpeculativeConfig:
    """``speculative_config`` (vLLM's keys): who proposes draft tokens and how many per step."""

    method: str = "ngram"
    num_speculative_tokens: int = 3
    prompt_lookup_min: int = 1  # ngram: shortest suffix n-gram looked up in the context
    prompt_lookup_max: int = 4  # ngram: longest
    model: str | None = None  # draft_model / eagle: the draft's path ("default": the embedded model)
    disable_by_batch_size: int | None = None  # no drafts while more requests than this are running + waiting
    hf_overrides: dict[str, Any] | None = None  # draft_model: config.json overrides (e.g. num_hidden_layers)
    draft_model_config: "ModelConfig | None" = None  # draft_model / eagle / eagle3: resolved by EngineArgs
    # eagle / eagle3: the head's config.json (draft_vocab_size, eagle_config, norm_before_residual, ...)
    draft_hf_config: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "SpeculativeConfig | None":
        """Validate a user's ``speculative_config`` dict; errors name the offending key."""
        if d is None:
            return None
        if isinstance(d, SpeculativeConfig):
            return d
        if not isinstance(d, dict):
            raise ValueError(f"speculative_config must be a JSON object (dict), got {type(d).__name__}")
        unknown = sorted(set(d) - set(_SPEC_KEYS))
        if unknown:
            raise ValueError(f"speculative_config: unknown key(s) {', '.join(map(repr, unknown))}; "
                             f"known keys: {', '.join(_SPEC_KEYS)}")
        method, model = d.get("method"), d.get("model")
        if method is None:  # vLLM: a model path alone means a draft model; "ngram" as the model means prompt lookup
            if model is None:
                raise ValueError("speculative_config.method is required (ngram, draft_model, eagle or eagle3), "
                                 "or give speculative_config.model (a draft model)")
            method = "ngram" if model in ("ngram", "[ngram]") else "draft_model"
        if method not in SPEC_METHODS:
            raise ValueError(f"speculative_config.method must be one of {', '.join(SPEC_METHODS)}, got {method!r}")
        k = d.get("num_speculative_tokens")
        if k is None:
            raise ValueError("speculative_config.num_speculative_tokens is required (an integer >= 1)")
        _check_int("num_speculative_tokens", k, 1)
        lo, hi = d.get("prompt_lookup_min"), d.get("prompt_lookup_max")
        if method == "ngram":  # vLLM: one of the two alone sets both
            for name, v in (("prompt_lookup_min", lo), ("prompt_lookup_max", hi)):
                if v is not None:
                    _check_int(name, v, 1)
            lo = hi if lo is None else lo
            hi = lo if hi is None else hi
            lo, hi = (1 if lo is None else lo), (4 if hi is None else hi)
            if lo > hi:
                raise ValueError(f"speculative_config.prompt_lookup_min ({lo}) must be <= prompt_lookup_max ({hi})")
        elif lo is not None or hi is not None:
            raise ValueError(f"speculative_config.prompt_lookup_min / prompt_lookup_max apply to method 'ngram', "
                             f"not {method!r}")
        dbs = d.get("disable_by_batch_size")
        if dbs is not None:
            _check_int("disable_by_batch_size", dbs, 1)
        if model is not None and not isinstance(model, str):
            raise ValueError(f"speculative_config.model must be a string (a path or 'default'), got {model!r}")
        if method == "draft_model" and model is None:
            raise ValueError("speculative_config.model is required for method 'draft_model' (a path, a Hub id or "
                             "'default')")
        if method in ("eagle", "eagle3") and model is None:
            raise ValueError(f"speculative_config.model is required for method {method!r} (the EAGLE head's "
                             "directory or Hub id)")
        overrides = d.get("hf_overrides")
        if overrides is not None and (not isinstance(overrides, dict) or method != "draft_model"):
            raise ValueError("speculative_config.hf_overrides must be a dict, and applies to method 'draft_model'")
        return cls(method=method, num_speculative_tokens=k, prompt_lookup_min=lo or 1, prompt_lookup_max=hi or 1,
                   model=model if method != "ngram" else None, disable_by_batch_size=dbs, hf_overrides=overrides)


def _check_int(name: str, v: Any, lo: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ValueError(f"speculative_config.{name} must be an integer >= {lo}, got {v!r}")


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
    speculative_config: SpeculativeConfig | None = None
