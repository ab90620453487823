"""Resolve ``--model`` (a directory, a ``.gguf`` file, or ``default``) to an HF directory."""
from __future__ import annotations

import os

from pagedserve.models.default_model import default_model_gguf, is_default_model
from pagedserve.models.gguf import gguf_to_hf_dir


def resolve_model_dir(model: str | None, revision: str | None = None) -> str:
    if is_default_model(model):
        return gguf_to_hf_dir(default_model_gguf())
    assert model is not None
    path = os.path.expanduser(model)
    if path.startswith("hf://"):
        raise ValueError(f"model: {model!r}: downloading from a hub is not supported by the runtime; "
                         "download the model into a directory (the operator's model cache does this) "
                         "and pass its path")
    if os.path.isfile(path) and path.endswith(".gguf"):
        return gguf_to_hf_dir(path)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"model: {model!r} has no config.json")
        return path
    raise FileNotFoundError(f"model: {model!r} is neither a model directory, a .gguf file nor 'default'")
