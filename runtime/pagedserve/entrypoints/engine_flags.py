"""The engine's command-line flags (vLLM's names), shared by ``generate``, ``serve`` and ``bench``."""
from __future__ import annotations

import argparse
import json
from dataclasses import fields

from pagedserve.engine.arg_utils import EngineArgs


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--model", default=None, help="a Hugging Face Hub repo id (ORG/NAME, hf://ORG/NAME, "
                   "ORG/NAME:FILE.gguf; downloaded into the HF cache), an HF model directory, a .gguf file, or "
                   "'default' (the embedded SmolLM2-135M-Instruct; also used when --model is absent)")
    g.add_argument("--tokenizer", default=None, help="tokenizer directory or Hub repo id (default: the model's)")
    g.add_argument("--tokenizer-revision", default=None, help="branch, tag or commit of a Hub --tokenizer")
    g.add_argument("--download-dir", default=None,
                   help="cache directory for Hub downloads (default: $HF_HUB_CACHE, else $HF_HOME/hub)")
    g.add_argument("--served-model-name", default=None)
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16", "half", "float"])
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    g.add_argument("--kv-cache-memory", type=int, default=None, help="KV cache size in bytes (CPU budget)")
    g.add_argument("--num-gpu-blocks-override", type=int, default=None)
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--swap-space", type=float, default=4.0, help="GiB of CPU memory for swapped KV blocks")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                   help="automatic prefix caching (default: on)")
    g.add_argument("--max-num-seqs", type=int, default=None)
    g.add_argument("--max-num-batched-tokens", type=int, default=None)
    g.add_argument("--long-prefill-token-threshold", type=int, default=0)
    g.add_argument("--scheduling-policy", default="fcfs", choices=["fcfs", "priority"])
    g.add_argument("--preemption-mode", default="recompute", choices=["recompute", "swap", "auto"])
    g.add_argument("--priority-aging-interval", type=float, default=None,
                   help="seconds of waiting worth one priority level (0 = strict priority; default 10)")
    g.add_argument("--auto-swap-min-tokens", type=int, default=None,
                   help="--preemption-mode auto swaps when recompute would redo at least this many tokens (default 64)")
    g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    g.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1,
                   help="pipeline stages, one process per stage and tensor rank (docs/pipeline_parallel.md)")
    g.add_argument("--distributed-executor-backend", default=None,
                   help="mp (processes on this node, the default) or ray (ranks as Ray actors across the nodes "
                        "of a Ray cluster: `ray start --head` here, `ray start --address=HEAD:6379` on the others; "
                        "docs/pipeline_parallel.md)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"])
    g.add_argument("--quantization", "-q", default=None,
                   help="the checkpoint's method is read from config.json's quantization_config; this flag "
                        "checks it, or with fp8 on an unquantized checkpoint quantizes the linear layers to fp8 "
                        "(e4m3) after loading (GPUs of compute capability 8.9+); see docs/quantization.md")
    g.add_argument("--kv-cache-dtype", default="auto",
                   help="auto (the model dtype), fp8 / fp8_e4m3 or fp8_e5m2: K/V stored in fp8 with scale 1 "
                        "(twice the cached tokens, not faster yet; GPUs of compute capability 8.9+)")
    g.add_argument("--trust-remote-code", action="store_true")
    g.add_argument("--hf-overrides", type=_json_object, default=None,
                   help="a JSON object merged into the model's config.json, e.g. "
                        "'{\"num_hidden_layers\": 2}' or '{\"quantization_config\": {...}}'")
    g.add_argument("--revision", default=None, help="branch, tag or commit of a Hub --model (default: main)")
    g.add_argument("--enforce-eager", action="store_true")
    g.add_argument("--attention-backend", default="auto", choices=["auto", "torch", "triton"])
    g.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters on the base model (docs/lora.md)")
    g.add_argument("--max-loras", type=int, default=None, help="LoRA adapters on the GPU at once (default 1)")
    g.add_argument("--max-lora-rank", type=int, default=None, help="largest LoRA rank accepted (default 16)")
    g.add_argument("--max-cpu-loras", type=int, default=None,
                   help="LoRA adapters kept in CPU memory (default: --max-loras)")
    g.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="schedule step N+1 while step N runs on the device (default: on with CUDA)")
    g.add_argument("--speculative-config", type=_json_object, default=None,
                   help='speculative decoding as JSON, e.g. \'{"method": "ngram", "num_speculative_tokens": 3, '
                        '"prompt_lookup_max": 4}\'; methods ngram, draft_model, eagle, eagle3 (with "model": the '
                        'draft / EAGLE head) (docs/speculative_decoding.md)')
    g.add_argument("--limit-mm-per-prompt", default=None,
                   help='most images per prompt of a vision-language model as JSON, e.g. \'{"image": 2}\' '
                        '(default 4; docs/multimodal.md)')
    g.add_argument("--max-num-encoder-input-tokens", type=int, default=None,
                   help="image tokens the vision encoder may compute per step (default: --max-num-batched-tokens, "
                        "at least the largest image)")
    g.add_argument("--encoder-cache-size", type=int, default=None,
                   help="image tokens of encoder outputs kept for reuse (default: the encoder budget)")
    g.add_argument("--disable-chunked-mm-input", action="store_true", default=None,
                   help="never split an image's tokens across prefill chunks")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--speculative-config is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--speculative-config must be a JSON object")
    return value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def engine_args_from(ns: argparse.Namespace) -> EngineArgs:
    """EngineArgs from parsed flags; a flag left unset (None) keeps EngineArgs' own default."""
    defaults = {f.name: f.default for f in fields(EngineArgs)}
    return EngineArgs(**{k: v for k, v in vars(ns).items()
                         if k in defaults and not (v is None and defaults[k] is not None)})
