"""``EngineArgs``: the flat, user-facing engine arguments (the CLI flags and ``LLM(...)`` keywords,
named as in vLLM). :meth:`EngineArgs.create_engine_config` validates them and resolves the model
(its files, architecture and context length) into the :class:`~pagedserve.config.EngineConfig`
that the rest of the engine reads. It lives above the config, as vLLM's ``engine/arg_utils.py``
does, because resolving reaches the model registry and the layers.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from pagedserve.arch_config import ArchConfig
from pagedserve.multimodal.inputs import parse_limit_mm_per_prompt
from pagedserve.config import (KV_CACHE_DTYPES, CacheConfig, EngineConfig, LoRAConfig, ModelConfig, ParallelConfig,
                               SchedulerConfig, SpeculativeConfig)
from pagedserve.utils import default_device, parse_dtype


@dataclass
class EngineArgs:
    """User-facing engine arguments (vLLM's names)."""

    model: str | None = None
    tokenizer: str | None = None
    served_model_name: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    kv_cache_memory: int | None = None
    num_gpu_blocks_override: int | None = None
    block_size: int = 16
    swap_space: float = 4.0
    enable_prefix_caching: bool = True
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    long_prefill_token_threshold: int = 0
    scheduling_policy: str = "fcfs"
    preemption_mode: str = "recompute"
    priority_aging_interval: float = 10.0
    auto_swap_min_tokens: int = 64
    max_waiting_requests: int | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None  # "mp" (the default: one node) or "ray" (multi-node)
    seed: int = 0
    device: str | None = None
    load_format: str = "auto"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    trust_remote_code: bool = False
    revision: str | None = None
    tokenizer_revision: str | None = None
    download_dir: str | None = None  # the HF cache directory for Hub downloads (default: $HF_HUB_CACHE)
    enforce_eager: bool = False
    attention_backend: str = "auto"
    async_scheduling: bool | None = None  # None: on for CUDA, off elsewhere
    hf_overrides: dict[str, Any] | None = None
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    # vLLM's speculative_config: {"method": "ngram", "num_speculative_tokens": k, ...} (docs/speculative_decoding.md)
    speculative_config: dict[str, Any] | None = None
    # vLLM's limit_mm_per_prompt: {"image": N} (or its JSON text); default 4 images per prompt
    limit_mm_per_prompt: dict[str, int] | str | None = None
    # vLLM's SchedulerConfig fields for the encoder (docs/multimodal.md), in image tokens; None:
    # max_num_batched_tokens, raised to the largest image seen
    max_num_encoder_input_tokens: int | None = None
    encoder_cache_size: int | None = None
    disable_chunked_mm_input: bool = False

    def create_engine_config(self) -> EngineConfig:
        from pagedserve.models.resolve import resolve_model_dir, resolve_tokenizer_dir

        self._verify()
        device = self.device or default_device()
        model_dir = resolve_model_dir(self.model, revision=self.revision, download_dir=self.download_dir,
                                      load_format=self.load_format)
        tokenizer_dir = resolve_tokenizer_dir(self.tokenizer, self.tokenizer_revision, download_dir=self.download_dir)
        hf_cfg = _read_json(os.path.join(model_dir, "config.json"), required=True)
        if self.hf_overrides:
            hf_cfg.update(self.hf_overrides)
        arch = ArchConfig.from_hf(hf_cfg)
        from pagedserve.models.registry import check_architecture

        check_architecture(arch.architecture)
        if self.tensor_parallel_size > 1:
            _check_tensor_parallel(self.tensor_parallel_size, arch, device)
        if self.pipeline_parallel_size > 1:
            self._check_pipeline_parallel(arch, device)
        gen_cfg = _read_json(os.path.join(model_dir, "generation_config.json"), required=False)
        for eos in _as_list(gen_cfg.get("eos_token_id")):
            if eos not in arch.eos_token_ids:
                arch.eos_token_ids.append(eos)
        from pagedserve.layers.quantization import detect_quantization, make_quant_config

        quant = detect_quantization(hf_cfg.get("quantization_config"), self.quantization)
        dtype = _resolve_dtype(self.dtype, hf_cfg, device)
        max_len = _resolve_max_model_len(self.max_model_len, arch)
        on_gpu = device.startswith("cuda")
        max_seqs = self.max_num_seqs or (1024 if on_gpu else 256)
        budget = self.max_num_batched_tokens or (16384 if on_gpu else 2048)
        if budget < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {budget}")
        name = self.served_model_name or (self.model.removeprefix("hf://") if self.model and self.model != "default"
                                          else None) or _default_served_name(model_dir)
        model_config = ModelConfig(
            model=model_dir, served_model_name=name, arch=arch, dtype=dtype, max_model_len=max_len,
            load_format=self.load_format, seed=self.seed, generation_config=gen_cfg,
            trust_remote_code=self.trust_remote_code,
            quantization=quant, quant_config=hf_cfg.get("quantization_config") if quant else None,
            tokenizer=tokenizer_dir, limit_mm_per_prompt=parse_limit_mm_per_prompt(self.limit_mm_per_prompt),
            source=dict(model=self.model, revision=self.revision, download_dir=self.download_dir,
                        load_format=self.load_format))
        if arch.is_multimodal:
            _check_multimodal(self, arch)
        if quant is not None:
            make_quant_config(quant, model_config.quant_config).check_device(device)
        if self.kv_cache_dtype != "auto":
            from pagedserve.layers.fp8 import check_fp8_device

            check_fp8_device(device)
        cache_config = CacheConfig(
            block_size=self.block_size, gpu_memory_utilization=self.gpu_memory_utilization,
            kv_cache_memory=self.kv_cache_memory, num_gpu_blocks_override=self.num_gpu_blocks_override,
            swap_space=self.swap_space, enable_prefix_caching=self.enable_prefix_caching,
            cache_dtype=self.kv_cache_dtype, sliding_window=arch.all_layers_window())
        sched = SchedulerConfig(
            max_num_seqs=max_seqs, max_num_batched_tokens=budget, max_model_len=max_len,
            long_prefill_token_threshold=self.long_prefill_token_threshold,
            policy=self.scheduling_policy, max_waiting_requests=self.max_waiting_requests,
            preemption_mode=self.preemption_mode, priority_aging_interval=self.priority_aging_interval,
            auto_swap_min_tokens=self.auto_swap_min_tokens,
            max_num_encoder_input_tokens=self.max_num_encoder_input_tokens, encoder_cache_size=self.encoder_cache_size,
            disable_chunked_mm_input=bool(self.disable_chunked_mm_input))
        parallel = ParallelConfig(self.tensor_parallel_size, self.pipeline_parallel_size,
                                  self.distributed_executor_backend or "mp")
        async_sched = on_gpu if self.async_scheduling is None else self.async_scheduling
        if self.pipeline_parallel_size > 1:
            async_sched = False  # the first stage builds its input ids from the host (docs/pipeline_parallel.md)
        lora = (LoRAConfig(self.max_loras, self.max_lora_rank, self.max_cpu_loras or self.max_loras)
                if self.enable_lora else None)
        spec = SpeculativeConfig.from_dict(self.speculative_config)
        if spec is not None:
            if self.async_scheduling:
                raise ValueError("async_scheduling=True with speculative_config: speculative decoding needs each "
                                 "step's accepted tokens on the host before the next step is scheduled; drop one")
            async_sched = False  # the proposer reads the accepted tokens (docs/speculative_decoding.md)
            if spec.method == "draft_model":
                spec.draft_model_config = self._draft_model_config(spec, model_config, device)
            elif spec.method in ("eagle", "eagle3"):
                spec.draft_model_config = self._eagle_config(spec, model_config)
        return EngineConfig(model_config, cache_config, sched, parallel, device,
                            enforce_eager=self.enforce_eager, attention_backend=self.attention_backend,
                            async_scheduling=async_sched, lora_config=lora, speculative_config=spec)

    def _check_pipeline_parallel(self, arch: ArchConfig, device: str) -> None:
        """Clear errors before any process starts (docs/pipeline_parallel.md)."""
        from pagedserve.distributed.parallel_state import check_pipeline_parallel

        pp, tp = self.pipeline_parallel_size, self.tensor_parallel_size
        check_pipeline_parallel(arch, pp)
        for flag, on in (("enable_lora", self.enable_lora), ("speculative_config", bool(self.speculative_config)),
                         ("async_scheduling", bool(self.async_scheduling))):
            if on:
                raise ValueError(f"pipeline_parallel_size {pp} with {flag} is not supported yet; drop one")
        if device.startswith("cuda"):
            if device not in ("cuda", "cuda:0"):
                raise ValueError(f"device={device!r} with pipeline_parallel_size {pp}: rank r runs on cuda:r; pick "
                                 "the GPUs with CUDA_VISIBLE_DEVICES and use device='cuda'")
            visible = torch.cuda.device_count()
            if tp * pp > visible:
                raise ValueError(f"tensor_parallel_size x pipeline_parallel_size ({tp} x {pp}) is larger than the "
                                 f"number of visible GPUs ({visible})")
        elif device != "cpu":
            raise ValueError(f"pipeline parallelism runs on CUDA GPUs (NCCL) or on the CPU (gloo), not on {device!r}")

    def _draft_model_config(self, spec: SpeculativeConfig, target: ModelConfig, device: str) -> ModelConfig:
        """The draft model of ``method: draft_model``: resolved like --model, same tokenizer (vocabulary)
        and KV layout as the target, so that its layers' KV lives in the same pool and block tables."""
        from pagedserve.models.registry import check_architecture
        from pagedserve.models.resolve import resolve_model_dir

        if self.tensor_parallel_size > 1:
            raise ValueError("speculative_config.method='draft_model' runs with tensor_parallel_size=1 only")
        draft_dir = resolve_model_dir(spec.model, download_dir=self.download_dir, load_format=self.load_format)
        hf_cfg = _read_json(os.path.join(draft_dir, "config.json"), required=True)
        hf_cfg.update(spec.hf_overrides or {})
        arch = ArchConfig.from_hf(hf_cfg)
        check_architecture(arch.architecture)
        t = target.arch
        if arch.vocab_size != t.vocab_size:
            raise ValueError(f"speculative_config.model: the draft's vocabulary ({arch.vocab_size}) differs from the "
                             f"target's ({t.vocab_size}); the draft must use the same tokenizer")
        if (arch.num_kv_heads, arch.head_dim) != (t.num_kv_heads, t.head_dim):
            raise ValueError(f"speculative_config.model: the draft's KV layout ({arch.num_kv_heads} KV heads x "
                             f"{arch.head_dim}) differs from the target's ({t.num_kv_heads} x {t.head_dim}); "
                             "drafts with another KV layout are not supported yet")
        arch.eos_token_ids = list(t.eos_token_ids)
        return ModelConfig(model=draft_dir, served_model_name=target.served_model_name + "-draft", arch=arch,
                           dtype=target.dtype, max_model_len=target.max_model_len, load_format=self.load_format,
                           seed=self.seed)

    def _eagle_config(self, spec: SpeculativeConfig, target: ModelConfig) -> ModelConfig:
        """The EAGLE / EAGLE-3 head of ``method: eagle`` / ``eagle3``: a one-layer Llama head over the
        target's hidden states (models/eagle.py); its width, vocabulary and KV layout must be the target's."""
        from pagedserve.models.eagle import check_eagle_head
        from pagedserve.models.resolve import resolve_model_dir

        if self.tensor_parallel_size > 1:
            raise ValueError(f"speculative_config.method={spec.method!r} runs with tensor_parallel_size=1 only")
        head_dir = resolve_model_dir(spec.model, download_dir=self.download_dir, load_format=self.load_format)
        hf_cfg = _read_json(os.path.join(head_dir, "config.json"), required=True)
        arch = check_eagle_head(spec.method, hf_cfg, target.arch)
        spec.draft_hf_config = hf_cfg
        return ModelConfig(model=head_dir, served_model_name=target.served_model_name + "-eagle", arch=arch,
                           dtype=target.dtype, max_model_len=target.max_model_len, load_format=self.load_format,
                           seed=self.seed)

    def _verify(self) -> None:
        if self.block_size not in (1, 2, 4, 8, 16, 32, 64, 128):
            raise ValueError(f"block_size must be a power of two from 1 to 128 (usually 16 or 32), got {self.block_size}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.swap_space < 0:
            raise ValueError(f"swap_space must be >= 0 GiB, got {self.swap_space}")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(f"kv_cache_memory must be a positive number of bytes, got {self.kv_cache_memory}")
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 1:
            raise ValueError(f"num_gpu_blocks_override must be >= 1, got {self.num_gpu_blocks_override}")
        if self.load_format not in ("auto", "safetensors", "dummy"):
            raise ValueError(f"load_format must be auto, safetensors or dummy, got {self.load_format!r}")
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling_policy must be fcfs or priority, got {self.scheduling_policy!r}")
        if self.preemption_mode not in ("recompute", "swap", "auto"):
            raise ValueError(f"preemption_mode must be recompute, swap or auto, got {self.preemption_mode!r}")
        if not self.priority_aging_interval >= 0:
            raise ValueError(f"priority_aging_interval must be >= 0 seconds, got {self.priority_aging_interval}")
        if self.auto_swap_min_tokens < 0:
            raise ValueError(f"auto_swap_min_tokens must be >= 0, got {self.auto_swap_min_tokens}")
        _check_encoder_budget(self.max_num_encoder_input_tokens, self.encoder_cache_size)
        from pagedserve.layers.quantization import canonical_name

        canonical_name(self.quantization)  # a clear error for an unknown or unsupported method
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}")
        if self.pipeline_parallel_size < 1:
            raise ValueError(f"pipeline_parallel_size must be >= 1, got {self.pipeline_parallel_size}")
        check_executor_backend(self.distributed_executor_backend)
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        for flag, v in (("max_loras", self.max_loras), ("max_lora_rank", self.max_lora_rank)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{flag} must be an integer >= 1, got {v!r}")
        if self.max_lora_rank > 512:
            raise ValueError(f"max_lora_rank must be <= 512, got {self.max_lora_rank}")
        if self.max_cpu_loras is not None and (not isinstance(self.max_cpu_loras, int)
                                               or self.max_cpu_loras < self.max_loras):
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras!r}) must be an integer >= max_loras ({self.max_loras})")
        SpeculativeConfig.from_dict(self.speculative_config)  # a clear error naming the bad key
        if self.attention_backend not in ("auto", "torch", "triton"):
            raise ValueError(f"attention_backend must be auto, torch or triton, got {self.attention_backend!r}")


def check_executor_backend(backend: str | None) -> None:
    """``--distributed-executor-backend``: ``mp`` (processes on this node) or ``ray`` (ranks as Ray
    actors across the nodes of a Ray cluster; needs the optional ``ray`` package)."""
    if backend in (None, "mp"):
        return
    if backend == "ray":
        if not _ray_installed():
            raise ValueError("distributed_executor_backend 'ray' (--distributed-executor-backend ray) needs the 'ray' "
                             "package, which is not installed: pip install ray (or use 'mp' on one node)")
        return
    raise ValueError(f"distributed_executor_backend must be mp or ray, got {backend!r}")


def _ray_installed() -> bool:
    """Whether ``import ray`` can work, without importing it (it is slow and optional)."""
    import importlib.util

    try:
        return importlib.util.find_spec("ray") is not None
    except ValueError:  # in sys.modules without a spec (None: a blocked import)
        return False


def _check_tensor_parallel(tp: int, arch: ArchConfig, device: str) -> None:
    from pagedserve.distributed.parallel_state import check_tensor_parallel

    check_tensor_parallel(arch, tp)  # heads, KV heads, intermediate size must divide
    if device.startswith("cuda"):
        if device not in ("cuda", "cuda:0"):
            raise ValueError(f"device={device!r} with tensor_parallel_size {tp}: rank r runs on cuda:r; pick the GPUs "
                             "with CUDA_VISIBLE_DEVICES and use device='cuda'")
        visible = torch.cuda.device_count()
        if tp > visible:
            raise ValueError(f"tensor_parallel_size {tp} is larger than the number of visible GPUs ({visible})")
    elif device != "cpu":
        raise ValueError(f"tensor parallelism runs on CUDA GPUs (NCCL) or on the CPU (gloo), not on {device!r}")


def _check_encoder_budget(budget: Any, size: Any) -> None:
    """``max_num_encoder_input_tokens`` / ``encoder_cache_size``: positive integers (or None), and the
    cache holds at least one step's encoder outputs."""
    for name, value in (("max_num_encoder_input_tokens", budget), ("encoder_cache_size", size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} (--{name.replace('_', '-')}) must be an integer >= 1 (image tokens), "
                             f"got {value!r}")
    if budget is not None and size is not None and size < budget:
        raise ValueError(f"encoder_cache_size (--encoder-cache-size) {size} is smaller than "
                         f"max_num_encoder_input_tokens {budget}: a step's encoder outputs must fit the cache")


def _check_multimodal(args: "EngineArgs", arch: ArchConfig) -> None:
    """Vision-language models run on one GPU without LoRA or a draft model (the image features are
    spliced into the embeddings on the driver only)."""
    if args.tensor_parallel_size > 1:
        raise ValueError(f"tensor_parallel_size: {arch.architecture} (a vision-language model) runs with "
                         "tensor_parallel_size=1 only")
    if args.pipeline_parallel_size > 1:
        raise ValueError(f"pipeline_parallel_size: {arch.architecture} (a vision-language model) runs with "
                         "pipeline_parallel_size=1 only")
    if args.enable_lora:
        raise ValueError(f"enable_lora: LoRA is not supported for {arch.architecture}")
    if args.speculative_config and args.speculative_config.get("method") == "draft_model":
        raise ValueError(f"speculative_config: a draft model is not supported for {arch.architecture}")


def _read_json(path: str, required: bool) -> dict[str, Any]:
    if not os.path.exists(path):
        if required:
            raise FileNotFoundError(f"model: {os.path.basename(path)} not found in {os.path.dirname(path)}")
        return {}
    with open(path) as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as e:
            raise ValueError(f"model: {path} is not valid JSON: {e}") from None


def _as_list(v: Any) -> list[int]:
    if v is None:
        return []
    return [v] if isinstance(v, int) else list(v)


def _resolve_dtype(name: str, hf_cfg: dict[str, Any], device: str) -> torch.dtype:
    if name != "auto":
        return parse_dtype(name)
    if not device.startswith("cuda"):
        return torch.float32  # CPU: float32 is exact and, on most CPUs, the fastest
    cfg_dtype = hf_cfg.get("dtype") or hf_cfg.get("torch_dtype") or "bfloat16"
    dt = parse_dtype(cfg_dtype) if cfg_dtype in ("float16", "bfloat16", "float32") else torch.bfloat16
    return torch.bfloat16 if dt == torch.float32 else dt


def _resolve_max_model_len(requested: int | None, arch: ArchConfig) -> int:
    native = arch.max_position_embeddings
    scaling = arch.rope_scaling or {}
    if scaling.get("rope_type") == "llama3":
        native = max(native, int(scaling.get("original_max_position_embeddings", native)))
    if scaling.get("rope_type") in ("yarn", "dynamic") and scaling.get("factor"):
        # these scalings extend the context: to original length x factor (yarn) / native x factor (dynamic)
        base = int(scaling.get("original_max_position_embeddings") or native)
        native = max(native, int(base * float(scaling["factor"])))
    if requested is None:
        return native
    if requested > native:
        raise ValueError(f"max_model_len={requested} is larger than the model's maximum context of {native} "
                         "tokens (max_position_embeddings / rope_parameters in config.json)")
    return requested


def _default_served_name(model_dir: str) -> str:
    from pagedserve.models.default_model import DEFAULT_MODEL_NAME

    base = os.path.basename(os.path.normpath(model_dir))
    return DEFAULT_MODEL_NAME if base.startswith(DEFAULT_MODEL_NAME) else base
