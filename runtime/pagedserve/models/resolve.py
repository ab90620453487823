"""Resolve ``--model`` / ``--tokenizer`` to a local HF directory: ``default`` (the embedded model), a
directory, a ``.gguf`` file, or a Hugging Face Hub repo id (``ORG/NAME``, ``hf://ORG/NAME``,
``ORG/NAME:FILE.gguf``), downloaded into the HF cache by :mod:`pagedserve.models.hub`."""
from __future__ import annotations

import os

from pagedserve.models.default_model import default_model_gguf, is_default_model
from pagedserve.models.gguf import gguf_to_hf_dir
from pagedserve.models.hub import download_model, parse_repo_id


def resolve_model_dir(model: str | None, revision: str | None = None, *, download_dir: str | None = None,
                      load_format: str = "auto") -> str:
    # the embedded model's aliases (incl. its Hub id) need no network; an explicit --revision asks the Hub
    if model is None or (is_default_model(model) and not (revision and "/" in model)):
        return gguf_to_hf_dir(default_model_gguf())
    path = os.path.expanduser(model)
    if os.path.isfile(path) and path.endswith(".gguf"):
        return gguf_to_hf_dir(path)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"model: {model!r} has no config.json")
        return path
    ref = parse_repo_id(model)
    if ref is not None:
        local = download_model(ref.repo_id, revision, download_dir=download_dir, load_format=load_format,
                               gguf_file=ref.gguf_file)
        return gguf_to_hf_dir(local) if ref.gguf_file else local
    raise FileNotFoundError(f"model: {model!r} is neither a model directory, a .gguf file, a Hugging Face Hub "
                            "repository id (ORG/NAME) nor 'default'")


def resolve_tokenizer_dir(tokenizer: str | None, revision: str | None = None, *,
                          download_dir: str | None = None) -> str | None:
    """``--tokenizer``: None (the model's own), a directory, or a Hub repo id (tokenizer files only)."""
    if tokenizer is None:
        return None
    path = os.path.expanduser(tokenizer)
    if os.path.isdir(path):
        return path
    ref = parse_repo_id(tokenizer)
    if ref is not None and ref.gguf_file is None:
        return download_model(ref.repo_id, revision, download_dir=download_dir, tokenizer_only=True)
    raise FileNotFoundError(f"tokenizer: {tokenizer!r} is neither a directory nor a Hugging Face Hub repository "
                            "id (ORG/NAME)")


def check_model_argument(model: str | None, tokenizer: str | None = None) -> None:
    """Fail fast (before the server binds its port) on a ``--model`` / ``--tokenizer`` that can never
    resolve: not a default alias, an existing path or a Hub repo id. Nothing is downloaded here."""
    if model is not None and not is_default_model(model):
        path = os.path.expanduser(model)
        if not (os.path.isdir(path) or (os.path.isfile(path) and path.endswith(".gguf")) or parse_repo_id(model)):
            raise FileNotFoundError(f"model: {model!r} is neither a model directory, a .gguf file, a Hugging Face "
                                    "Hub repository id (ORG/NAME) nor 'default'")
    if tokenizer is not None and not os.path.isdir(os.path.expanduser(tokenizer)):
        ref = parse_repo_id(tokenizer)
        if ref is None or ref.gguf_file is not None:
            raise FileNotFoundError(f"tokenizer: {tokenizer!r} is neither a directory nor a Hugging Face Hub "
                                    "repository id (ORG/NAME)")
