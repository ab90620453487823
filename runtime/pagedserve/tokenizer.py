"""Tokenizer loading (HF fast tokenizers only: incremental detokenization needs the Rust backend)."""
from __future__ import annotations

import os
from typing import Any


def load_tokenizer(model_dir: str, trust_remote_code: bool = False) -> Any:
    """A local directory's tokenizer; never contacts the Hub (Hub repos are downloaded by models/hub.py)."""
    from transformers import AutoTokenizer

    has_files = any(os.path.exists(os.path.join(model_dir, f))
                    for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))
    if not has_files:
        raise FileNotFoundError(f"model: no tokenizer files (tokenizer.json) in {model_dir}")
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code, local_files_only=True)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"model: the tokenizer in {model_dir} has no fast (tokenizer.json) version")
    return tok
