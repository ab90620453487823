"""Turn a ``.gguf`` file into a cached Hugging Face model directory.

transformers' own GGUF reader dequantises the weights; we keep them in float32 so that
loading the directory with ``dtype="float32"`` reproduces transformers' GGUF load exactly.
The directory is built once (atomically) under the cache directory and reused. The conversion
runs in a spawned child process: transformers' GGUF loader imports Triton, and a process that
imported it prints nanobind's "leaked instances" report when it exits (the server's frontend at
SIGTERM, on its very first start). The child sends its result, then exits with its output
silenced.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from multiprocessing.connection import Connection

from pagedserve.spawn import spawn_children
from pagedserve.utils import cache_dir

logger = logging.getLogger(__name__)

# SmolLM2 and most llama.cpp conversions: transformers 4.x and 5.x disagree on the GGUF tokenizer
# class and special tokens; we write the model's own special tokens explicitly when we know them.
_CHATML_SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                   "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"}


def _cache_key(path: str) -> str:
    st = os.stat(path)
    h = hashlib.sha256(f"{os.path.abspath(path)}:{st.st_size}:{int(st.st_mtime)}:v1".encode())
    return h.hexdigest()[:16]


def gguf_to_hf_dir(path: str, out_root: str | None = None) -> str:
    """Return an HF directory (config.json, model.safetensors, tokenizer files) for ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model: GGUF file not found: {path}")
    root = out_root or os.path.join(cache_dir(), "gguf")
    name = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(root, f"{name}-{_cache_key(path)}")
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    os.makedirs(root, exist_ok=True)
    t0 = time.perf_counter()
    logger.info("converting %s to an HF directory (once; cached in %s)", path, out)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=root)
    try:
        _convert_in_child(path, tmp)
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished first
            if not os.path.exists(os.path.join(out, "config.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("GGUF conversion took %.1f s", time.perf_counter() - t0)
    return out


def _convert_in_child(path: str, out: str) -> None:
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    with spawn_children():
        proc = ctx.Process(target=_convert_child, args=(path, out, send), name="pagedserve-gguf", daemon=True)
        proc.start()
    send.close()
    try:
        err = recv.recv()
    except EOFError:
        proc.join()
        err = f"the conversion process died (exit code {proc.exitcode})"
    proc.join()
    if err is not None:
        raise RuntimeError(f"model: could not convert {path} to a Hugging Face directory: {err}")


def _convert_child(path: str, out: str, conn: Connection) -> None:
    err = None
    try:
        _convert(path, out)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        err = f"{type(e).__name__}: {e}"
    conn.send(err)
    conn.close()
    # the result is sent: silence the interpreter's exit (nanobind's report about Triton's objects)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def _convert(path: str, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    cfg = model.config.to_dict()
    for k in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg.pop(k, None)  # a GGUF-loaded model refuses save_pretrained while quantization_config is set
    clean = type(model)(type(model.config).from_dict(cfg))
    clean.load_state_dict(model.state_dict())
    clean.to(torch.float32).save_pretrained(out)
    tok.save_pretrained(out)
    _portable_tokenizer_config(out, tok)
    _portable_config(out)


def _portable_tokenizer_config(out: str, tok) -> None:
    """Write a tokenizer_config.json that transformers 4.x and 5.x read the same way."""
    cfg_path = os.path.join(out, "tokenizer_config.json")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    vocab = tok.get_vocab()
    special = dict(_CHATML_SPECIAL) if all(t in vocab for t in _CHATML_SPECIAL.values()) else {}
    cfg.update({"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                "add_bos_token": False if special else cfg.get("add_bos_token", False), **special})
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh, indent=1)
    stm = os.path.join(out, "special_tokens_map.json")
    if special and os.path.exists(stm):
        os.remove(stm)


def _portable_config(out: str) -> None:
    """transformers 5.x writes rope_theta only inside rope_parameters; 4.x reads only the top level."""
    cp = os.path.join(out, "config.json")
    with open(cp) as fh:
        c = json.load(fh)
    rp = c.get("rope_parameters") or {}
    if "rope_theta" not in c and "rope_theta" in rp:
        c["rope_theta"] = rp["rope_theta"]
        with open(cp, "w") as fh:
            json.dump(c, fh, indent=2)
