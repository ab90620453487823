"""LoRA adapters on the server (vLLM's interface): ``--lora-modules`` (``name=path`` or the JSON form
``{"name": ..., "path": ..., "base_model_name": ...}``) loaded at start-up, a request whose ``model``
is an adapter's name runs with it, ``/v1/models`` lists adapters with their ``parent``, and
``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` change them at run time (registered only
with ``--allow-runtime-lora-updating`` or ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``; behind the API key
like every ``/v1/`` route).

An adapter is served as a *view* of its base model (the same engine, tokenizer and defaults) that
carries its :class:`LoRARequest`; each load gets a fresh ``lora_int_id``, so an adapter unloaded and
loaded again (new weights under the same name) never reuses the old one's cached KV blocks.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from pagedserve.entrypoints.openai.errors import APIError, bad_request
from pagedserve.entrypoints.openai.serving_common import ServedModel, ServedModels
from pagedserve.lora.request import LoRARequest

ENV_ALLOW_RUNTIME_UPDATING = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
_ids = itertools.count(1)


@dataclass(frozen=True)
class LoRAModulePath:
    name: str
    path: str
    base_model_name: str | None = None


def parse_lora_modules(values: list[str] | None) -> list[LoRAModulePath]:
    """``--lora-modules`` values: ``name=path`` or a JSON object (ValueError naming the flag)."""
    out = []
    for v in values or []:
        v = v.strip()
        if v.startswith("{"):
            try:
                d = json.loads(v)
            except json.JSONDecodeError as e:
                raise ValueError(f"--lora-modules {v!r} is not valid JSON: {e}") from None
            if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not isinstance(d.get("path"), str):
                raise ValueError(f"--lora-modules {v!r}: the JSON form needs string 'name' and 'path' "
                                 "(and optionally 'base_model_name')")
            unknown = set(d) - {"name", "path", "base_model_name"}
            if unknown:
                raise ValueError(f"--lora-modules {v!r}: unknown key(s) {', '.join(sorted(unknown))}")
            out.append(LoRAModulePath(d["name"], d["path"], d.get("base_model_name")))
        else:
            name, sep, path = v.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--lora-modules {v!r}: expected name=path or a JSON object")
            out.append(LoRAModulePath(name, path))
    names = [m.name for m in out]
    for n in names:
        if names.count(n) > 1:
            raise ValueError(f"--lora-modules: the adapter name {n!r} is given twice")
    return out


ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"]


def resolve_adapter_path(path: str) -> str:
    """A local directory as it is; ``hf://ORG/NAME`` (or ``ORG/NAME`` that is no local directory) is
    downloaded from the Hub into the HF cache (only the adapter files; ``HF_HUB_OFFLINE``: from the
    cache). Blocking: call it in a thread."""
    local = os.path.abspath(os.path.expanduser(path))
    if not path.startswith("hf://") and (os.path.isdir(local) or path.startswith(("/", ".", "~"))):
        return local
    from pagedserve.models.hub import hub_settings, parse_repo_id

    ref = parse_repo_id(path)
    if ref is None or ref.gguf_file is not None:
        return local  # the reader says the directory does not exist
    s = hub_settings()
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(ref.repo_id, allow_patterns=ADAPTER_FILES, cache_dir=s.cache_dir,
                                 token=s.token or False, local_files_only=s.offline, endpoint=s.endpoint)
    except Exception as e:  # noqa: BLE001 - any Hub failure is a reason the adapter cannot be served
        raise ValueError(f"LoRA adapter {path!r}: cannot download it from the Hub ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None


def runtime_updating_allowed(flag: bool) -> bool:
    return flag or os.environ.get(ENV_ALLOW_RUNTIME_UPDATING, "").lower() in ("1", "true")


def _lock(served: ServedModels) -> asyncio.Lock:
    if served.lora_lock is None:
        served.lora_lock = asyncio.Lock()
    return served.lora_lock


async def load_adapter(served: ServedModels, name: str, path: str, base_model_name: str | None = None
                       ) -> ServedModel:
    """Load an adapter into its base model's engine and serve it under ``name`` (ValueError: why not)."""
    async with _lock(served):
        if name in served.by_name or name in served.adapters:
            raise ValueError(f"The lora adapter '{name}' has already been loaded.")
        if base_model_name is None:
            base = served.models[0]
        elif base_model_name in served.by_name:
            base = served.by_name[base_model_name]
        else:
            raise ValueError(f"base_model_name {base_model_name!r} is not a served model "
                             f"({', '.join(sorted(served.by_name))})")
        if base.engine.config.lora_config is None:
            raise ValueError(f"LoRA is not enabled for {base.name!r}: start the server with --enable-lora")
        local = await asyncio.get_running_loop().run_in_executor(None, resolve_adapter_path, path)
        lr = LoRARequest(name, next(_ids), local, base_model_name=base.name)
        await base.engine.add_lora(lr)
        view = replace(base, names=[name], lora_request=lr, created=int(time.time()))
        served.adapters[name] = view
        return view


async def unload_adapter(served: ServedModels, name: str) -> None:
    async with _lock(served):
        view = served.adapters.pop(name, None)
        if view is None:
            raise APIError(404, f"The lora adapter '{name}' cannot be found.", param="lora_name",
                           code="not_found")
        try:
            await view.engine.remove_lora(view.lora_request.lora_int_id)
        except Exception:  # noqa: BLE001 - the name is gone either way; the engine drops it lazily
            pass


def adapter_card(view: ServedModel) -> dict:
    lr = view.lora_request
    return {"id": lr.lora_name, "object": "model", "created": view.created, "owned_by": "pagedserve",
            "root": lr.lora_path, "parent": lr.base_model_name, "max_model_len": view.engine.max_model_len,
            "permission": []}


def _field(body: dict, key: str) -> str | None:
    v = body.get(key)
    if v is not None and (not isinstance(v, str) or not v):
        raise bad_request(f"'{key}' must be a non-empty string", param=key)
    return v


async def load_lora_adapter(request: web.Request, body: dict, served: ServedModels) -> web.Response:
    name, path = _field(body, "lora_name"), _field(body, "lora_path")
    if name is None or path is None:
        raise bad_request("Both 'lora_name' and 'lora_path' must be provided.")
    try:
        await load_adapter(served, name, path, _field(body, "base_model_name"))
    except ValueError as e:
        raise bad_request(str(e), param="lora_path") from None
    return web.Response(status=200, text=f"Success: LoRA adapter '{name}' added successfully.")


async def unload_lora_adapter(request: web.Request, body: dict, served: ServedModels) -> web.Response:
    name = _field(body, "lora_name")
    if name is None:
        raise bad_request("'lora_name' must be provided.", param="lora_name")
    await unload_adapter(served, name)
    return web.Response(status=200, text=f"Success: LoRA adapter '{name}' removed successfully.")


async def load_static_adapters(served: ServedModels, modules: list[LoRAModulePath]) -> None:
    """``--lora-modules`` at start-up: a bad adapter stops the server with the reason."""
    for m in modules:
        try:
            await load_adapter(served, m.name, m.path, m.base_model_name)
        except ValueError as e:
            raise ValueError(f"--lora-modules {m.name}={m.path}: {e}") from None


