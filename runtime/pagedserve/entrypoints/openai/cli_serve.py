"""``pagedserve serve``: the OpenAI-compatible server's flags (vLLM's names), multi-model plans
(several ``--model`` or a YAML ``--config``), and the fail-fast checks for features not built yet."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import dataclass, fields, replace
from typing import Any

from pagedserve import startup
from pagedserve.config import KV_CACHE_DTYPES
from pagedserve.layers.quantization import canonical_name
from pagedserve.engine.arg_utils import check_executor_backend
from pagedserve.entrypoints.engine_flags import add_engine_flags, engine_args_from

logger = logging.getLogger("pagedserve.server")

ENV_API_KEY = "PAGEDSERVE_API_KEY"


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                   help="the model to serve (same as --model; vLLM's `serve MODEL` form)")
    add_engine_flags(p)
    e = p.add_argument_group("models")
    e.add_argument("--model", action="append", default=None,
                   help="Hub repo id (ORG/NAME), HF model directory, a .gguf file, or 'default' (the embedded SmolLM2-135M-Instruct, "
                        "also used without --model). Repeat to serve several models, routed by the request's "
                        "'model'")
    e.add_argument("--served-model-name", nargs="+", action="append", default=None, metavar="NAME",
                   help="name(s) clients use for the model (the first one is reported); with several --model, "
                        "give one --served-model-name per model, in the same order")
    e.add_argument("--config", default=None, metavar="FILE",
                   help="YAML file of flag values (flag names without '--'); a 'models:' list of per-model "
                        "settings ({model, served_model_name, engine flags...}) serves several models")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all IPv4 interfaces)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=os.environ.get(ENV_API_KEY) or None,
                   help=f"require 'Authorization: Bearer KEY' on /v1/*, /tokenize, /detokenize "
                        f"(default: ${ENV_API_KEY})")
    s.add_argument("--max-waiting-requests", type=int, default=None,
                   help="bound on requests admitted but not yet started; more get HTTP 429 (default: unbounded)")
    s.add_argument("--max-sequences-per-request", type=int, default=1024,
                   help="largest prompts x n (x best_of) one request may ask for; more get HTTP 400")
    s.add_argument("--timeout-keep-alive", type=float, default=5.0,
                   help="seconds a connection may stay idle, or take to send a request's headers, before it is "
                        "closed (slow or stuck clients cannot hold sockets)")
    s.add_argument("--request-body-timeout", type=float, default=60.0,
                   help="seconds a request body may take to arrive once its headers did; then HTTP 408 and the "
                        "connection closes")
    s.add_argument("--metrics-prefix", default="pagedserve", choices=["pagedserve", "vllm"],
                   help="metric name prefix on /metrics: 'vllm' serves vllm:* names so vLLM dashboards and "
                        "alerts work unchanged")
    lo = p.add_argument_group("LoRA adapters (with --enable-lora)")
    lo.add_argument("--lora-modules", nargs="+", action="extend", default=None, metavar="NAME=PATH",
                    help="adapters served from the start: name=path, or JSON {\"name\": ..., \"path\": ..., "
                         "\"base_model_name\": ...}")
    lo.add_argument("--allow-runtime-lora-updating", action="store_true",
                    help="enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter (also "
                         "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1)")
    t = p.add_argument_group("tool calling")
    t.add_argument("--enable-auto-tool-choice", action="store_true",
                   help="let the model decide when to call tools (tool_choice 'auto'); needs --tool-call-parser")
    t.add_argument("--tool-call-parser", default=None, choices=["llama3_json", "hermes", "mistral"],
                   help="how tool calls are found in the model's output")
    s.add_argument("--chat-template", default=None, help="chat template (a file or the template text) replacing "
                   "the tokenizer's")
    s.add_argument("--trust-request-chat-template", action="store_true",
                   help="allow requests to send their own chat_template")
    s.add_argument("--max-logprobs", type=int, default=20, help="largest logprobs / top_logprobs accepted")
    s.add_argument("--allowed-media-domains", nargs="+", default=None, metavar="HOST",
                   help="hosts whose http(s) image_url parts the server may fetch ('*': any); default none: "
                        "only data: URLs (docs/multimodal.md)")
    s.add_argument("--max-image-bytes", type=int, default=None, help="largest image accepted (default 20 MiB)")
    s.add_argument("--media-fetch-timeout", type=float, default=None,
                   help="seconds to fetch an http(s) image (default 10)")
    s.add_argument("--generation-config", default="auto", choices=["auto", "vllm"],
                   help="'auto': sampling defaults from the model's generation_config.json; 'vllm': none")
    s.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds SIGTERM waits for in-flight requests before aborting them")
    s.add_argument("--engine-startup-timeout", type=float, default=1800.0,
                   help="seconds to wait for an engine core to load its model")
    s.add_argument("--max-request-body-mb", type=float, default=64.0, help="largest accepted request body (MiB)")
    s.add_argument("--disable-access-log", "--disable-uvicorn-access-log", dest="disable_access_log",
                   action="store_true", help="do not log one line per HTTP request")
    s.add_argument("--disable-log-stats", action="store_true", help="do not log throughput every 10 s")
    s.add_argument("--disable-log-requests", action="store_true", help=argparse.SUPPRESS)  # vLLM compat, no-op
    s.add_argument("--no-uvloop", action="store_true", help="use asyncio's loop even if uvloop is installed")
    s.add_argument("--engine-core-factory", default=None, metavar="MODULE:CALLABLE",
                   help="build the engine core with this callable instead of the real one, e.g. "
                        "pagedserve.benchmarks.fake_core:FakeEngineCore to benchmark the HTTP layer alone")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pagedserve.entrypoints.openai.api_server", conflict_handler="resolve",
                                description="Serve one or more models over an OpenAI-compatible HTTP API.")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_serve_flags(p)
    return p


# -- plans ----------------------------------------------------------------------------------------
@dataclass
class ModelPlan:
    names: list[str]
    engine_args: Any  # EngineArgs
    config: Any  # EngineConfig (validated)
    tokenizer: Any
    chat_template: str | None
    max_token_chars: int = 0  # 2x the longest token's text (0: not computed yet)


def unsupported_features(ea: Any) -> list[str]:
    """Flags whose features the engine does not have yet: refuse them instead of ignoring them.
    (Delete a line here when the engine gains the feature.)"""
    out = []
    if ea.distributed_executor_backend not in (None, "mp"):
        try:
            check_executor_backend(ea.distributed_executor_backend)
        except ValueError as e:
            out.append(f"--distributed-executor-backend {ea.distributed_executor_backend}: {e}")
    try:
        canonical_name(ea.quantization)
    except ValueError as e:
        out.append(f"--quantization {ea.quantization}: {e}")
    if ea.kv_cache_dtype not in KV_CACHE_DTYPES:
        out.append(f"--kv-cache-dtype {ea.kv_cache_dtype}: must be one of {', '.join(KV_CACHE_DTYPES)}")
    if ea.max_waiting_requests is not None and ea.max_waiting_requests < 1:
        out.append(f"--max-waiting-requests must be >= 1, got {ea.max_waiting_requests}")
    return out


def _load_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as e:
        raise ValueError(f"--config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"--config {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a mapping of flag names to values")
    return data


def _ea_overrides(entry: dict, where: str) -> dict:
    from pagedserve.engine.arg_utils import EngineArgs

    names = {f.name for f in fields(EngineArgs)}
    out = {}
    for k, v in entry.items():
        key = str(k).replace("-", "_")
        if key not in names:
            raise ValueError(f"{where}: unknown setting {k!r}")
        out[key] = v
    return out


def _model_entries(args: argparse.Namespace) -> list[tuple[dict, list[str]]]:
    """[(EngineArgs overrides, served names)] from --config, --model / MODEL, --served-model-name."""
    yaml_models = None
    if args.config:
        data = _load_yaml(args.config)
        yaml_models = data.pop("models", None)
        defaults = make_parser()  # a flag left at its default takes the YAML value; a given flag wins
        dests = vars(args)
        for k, v in data.items():
            key = str(k).replace("-", "_")
            if key not in dests or key in ("config", "func"):
                raise ValueError(f"--config {args.config}: unknown flag {k!r}")
            if key == "model":
                v = [v] if isinstance(v, str) else list(v)
            elif key == "served_model_name":
                v = [[v]] if isinstance(v, str) else [list(v)]
            if getattr(args, key) == defaults.get_default(key):
                setattr(args, key, v)
    if yaml_models is not None:
        if not isinstance(yaml_models, list) or not yaml_models:
            raise ValueError(f"--config {args.config}: 'models' must be a non-empty list")
        entries = []
        for i, m in enumerate(yaml_models):
            m = {"model": m} if isinstance(m, str) else dict(m or {})
            names = m.pop("served_model_name", None) or m.pop("served-model-name", None)
            names = [names] if isinstance(names, str) else list(names or [])
            entries.append((_ea_overrides(m, f"--config {args.config} models[{i}]"), names))
        return entries
    models = list(args.model or [])
    if args.model_tag:
        models.insert(0, args.model_tag)
    name_lists = args.served_model_name or []
    if len(models) <= 1:
        names = [n for group in name_lists for n in group]
        return [({"model": models[0] if models else None}, names)]
    if name_lists and len(name_lists) != len(models):
        raise ValueError(f"{len(models)} models but {len(name_lists)} --served-model-name groups: give one "
                         "--served-model-name per --model, in the same order")
    return [({"model": m}, list(name_lists[i]) if name_lists else []) for i, m in enumerate(models)]


def _read_template(value: str | None) -> str | None:
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value) as fh:
            return fh.read()
    if "{" not in value:
        raise ValueError(f"--chat-template {value!r} is neither a file nor a template")
    return value


def prepare_models(args: argparse.Namespace) -> list[tuple[Any, list[str]]]:
    """The fast checks (flags, unsupported features, model arguments; no download, no conversion):
    [(EngineArgs, served names)]. Raises ValueError with a clear message."""
    from pagedserve.models.resolve import check_model_argument

    entries = _model_entries(args)  # first: a --config file fills in flags left at their defaults
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError("--api-key must not be empty")
    if args.shutdown_timeout < 0:
        raise ValueError(f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}")
    check_server_flags(args)
    base = replace(engine_args_from(args), model=None, served_model_name=None)
    _read_template(args.chat_template)
    out = []
    for overrides, names in entries:
        ea = replace(base, **overrides, served_model_name=names[0] if names else None)
        problems = unsupported_features(ea)
        if problems:
            raise ValueError("; ".join(problems))
        ea._verify()
        check_model_argument(ea.model, ea.tokenizer)
        out.append((ea, names))
    return out


def plan_models(args: argparse.Namespace) -> list[ModelPlan]:
    """Resolve and validate every model to serve. Raises ValueError with a clear message."""
    return resolve_plans(args, prepare_models(args))


def resolve_plans(args: argparse.Namespace, prepared: list[tuple[Any, list[str]]],
                  processes: list[Any] | None = None) -> list[ModelPlan]:
    """Resolve each prepared model (Hub download, GGUF conversion, config, tokenizer): slow.
    ``processes``: engine-core processes started ahead; once every model's config is known and valid,
    the first model's core gets its config, so its engine builds the model while the tokenizers load
    here (the others get theirs in ``start_engines``: on a GPU, one engine at a time)."""
    from pagedserve.tokenizer import load_tokenizer

    template = _read_template(args.chat_template)
    configs = []
    seen: set[str] = set()
    for ea, names in prepared:
        config = ea.create_engine_config()
        names = names or [config.model_config.served_model_name]
        for n in names:
            if n in seen:
                raise ValueError(f"served model name {n!r} is used by two models; pass --served-model-name")
            seen.add(n)
        configs.append((ea, names, config))
    startup.mark("config")
    if processes:
        processes[0].configure(configs[0][2])
    plans: list[ModelPlan] = []
    for ea, names, config in configs:
        tok = load_tokenizer(config.model_config.tokenizer or config.model_config.model, ea.trust_remote_code)
        # here, off the critical path: the engine core builds its model meanwhile (a 128k vocabulary)
        plans.append(ModelPlan(names, ea, config, tok, template, 2 * _max_token_chars(tok)))
    startup.mark("tokenizer")
    return plans


def check_server_flags(args: argparse.Namespace) -> None:
    """The HTTP-layer flags (request limits, timeouts, tool calling)."""
    if args.max_sequences_per_request < 1:
        raise ValueError(f"--max-sequences-per-request must be >= 1, got {args.max_sequences_per_request}")
    for flag in ("timeout_keep_alive", "request_body_timeout"):
        if not getattr(args, flag) > 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    from pagedserve.entrypoints.openai.serving_lora import parse_lora_modules

    if parse_lora_modules(getattr(args, "lora_modules", None)) and not getattr(args, "enable_lora", False):
        raise ValueError("--lora-modules needs --enable-lora")
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise ValueError("--enable-auto-tool-choice needs --tool-call-parser (llama3_json, hermes or mistral)")


def _max_token_chars(tokenizer: Any) -> int:
    try:
        return max(8, max(len(t) for t in tokenizer.get_vocab()))
    except Exception:
        return 256


async def start_engines(plans: list[ModelPlan], args: argparse.Namespace, processes: list[Any] | None = None) -> Any:
    """Start one engine-core process per model (one after the other on a GPU, so memory profiling
    sees the earlier ones; concurrently on CPU). ``processes``: the ``CoreProcess`` of each plan,
    started ahead (they imported the engine meanwhile). Returns ServedModels."""
    from pagedserve.engine.async_engine import AsyncEngine
    from pagedserve.entrypoints.openai.serving_common import (ServedModel, ServedModels, ServerOptions,
                                                              generation_defaults)
    from pagedserve.metrics import register_gpu_collector

    level = logging.getLevelName(logging.getLogger().level)
    processes = processes or [None] * len(plans)
    engines = [AsyncEngine(p.config, tokenizer=p.tokenizer, log_level=level if isinstance(level, str) else "INFO",
                           engine_index=0, log_stats=not args.disable_log_stats,
                           core_factory=args.engine_core_factory, core_process=cp) for p, cp in zip(plans, processes)]
    try:
        if all(p.config.device == "cpu" for p in plans):
            await asyncio.gather(*(e.start(args.engine_startup_timeout) for e in engines))
        else:
            for e in engines:
                await e.start(args.engine_startup_timeout)
    except BaseException:
        await asyncio.gather(*(e.shutdown(5) for e in engines), return_exceptions=True)
        raise
    startup.mark("engines")
    if any(p.config.device.startswith("cuda") for p in plans):
        register_gpu_collector()
    models = [ServedModel(p.names, e, generation_defaults(e), p.chat_template,
                          max_token_chars=p.max_token_chars or 2 * _max_token_chars(p.tokenizer))
              for p, e in zip(plans, engines)]
    opts = ServerOptions(trust_request_chat_template=args.trust_request_chat_template,
                         max_logprobs=args.max_logprobs, generation_config=args.generation_config,
                         max_sequences_per_request=args.max_sequences_per_request,
                         enable_auto_tool_choice=args.enable_auto_tool_choice,
                         tool_call_parser=args.tool_call_parser, media=media_options(args))
    served = ServedModels(models, opts)
    from pagedserve.entrypoints.openai.serving_lora import load_static_adapters, parse_lora_modules

    try:
        await load_static_adapters(served, parse_lora_modules(getattr(args, "lora_modules", None)))
    except BaseException:
        await asyncio.gather(*(e.shutdown(5) for e in engines), return_exceptions=True)
        raise
    return served


def media_options(args: argparse.Namespace) -> "MediaOptions":
    """--allowed-media-domains / --max-image-bytes / --media-fetch-timeout (entrypoints/media.py)."""
    from pagedserve.entrypoints.media import DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_IMAGE_BYTES, MediaOptions

    size = getattr(args, "max_image_bytes", None) or DEFAULT_MAX_IMAGE_BYTES
    timeout = getattr(args, "media_fetch_timeout", None) or DEFAULT_FETCH_TIMEOUT
    if size < 1 or timeout <= 0:
        raise ValueError("--max-image-bytes and --media-fetch-timeout must be positive")
    return MediaOptions(list(getattr(args, "allowed_media_domains", None) or []), size, timeout)
