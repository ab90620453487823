"""Benchmark datasets, seeded and shared by ``bench serve`` (online) and ``bench throughput`` (offline),
so both run exactly the same requests.

- ``random`` (vLLM's): input and output lengths uniform in ``[floor(L*(1-r)), ceil(L*(1+r))]``
  (``--random-input-len``, ``--random-output-len``, ``--random-range-ratio``), an optional shared
  prefix (``--random-prefix-len``), random token ids; every request generates exactly its output
  length (``ignore_eos``).
- ``lognormal``: input lengths lognormal with median ~200 (clipped 16-1024), output median ~150
  (clipped 16-512), random token ids, ``ignore_eos``; ``bench throughput`` and ``bench serve`` both
  use this module, so they run the same requests for the same seed.
- ``chitchat``: real conversations from the ``chitchat-dataset`` wheel (MIT; install with
  ``--no-deps``), read through importlib.metadata without importing the package; prompts are
  tokenized with the model's tokenizer (capped at 1024 tokens), output lengths as in lognormal.
  Where the wheel is missing (the GPU machine), ``$PAGEDSERVE_CHITCHAT_DATASET`` names the file
  instead: the wheel's ``dataset.json`` or an extract of it (:func:`read_chitchat`).

Token ids are drawn from ``[100, vocab_size - 100)``, away from the special tokens at the ends of
most vocabularies.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

DATASETS = ("random", "lognormal", "chitchat")
LOGNORMAL_SIGMA = 0.6
CHITCHAT_MAX_CHARS = 4000
CHITCHAT_MAX_TOKENS = 1024
#: the chitchat file to read instead of the wheel's (the whole ``dataset.json`` or an extract)
CHITCHAT_ENV = "PAGEDSERVE_CHITCHAT_DATASET"


@dataclass
class SampleRequest:
    prompt_token_ids: list[int]
    output_len: int
    prompt_text: str | None = None  # the text, when the prompt came from text (chitchat)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def add_dataset_args(p: argparse.ArgumentParser, default: str = "random") -> None:
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", "--dataset-name", dest="dataset", default=default, choices=DATASETS)
    g.add_argument("--num-prompts", type=int, default=1000)
    g.add_argument("--dataset-seed", type=int, default=0, help="seed of the dataset (lengths and token ids)")
    g.add_argument("--random-input-len", type=int, default=1024)
    g.add_argument("--random-output-len", type=int, default=128)
    g.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="lengths uniform within +-ratio of the given lengths")
    g.add_argument("--random-prefix-len", type=int, default=0, help="random prefix shared by every prompt")


def _check_range_ratio(r: float) -> None:
    if not 0.0 <= r < 1.0:
        raise ValueError(f"--random-range-ratio must be in [0, 1), got {r}")


def random_requests(n: int, vocab_size: int, input_len: int, output_len: int, range_ratio: float = 0.0,
                    prefix_len: int = 0, seed: int = 0) -> list[SampleRequest]:
    _check_range_ratio(range_ratio)
    if input_len < 1 or output_len < 1:
        raise ValueError("--random-input-len and --random-output-len must be >= 1")
    rng = np.random.default_rng(seed)
    in_lo, in_hi = max(1, math.floor(input_len * (1 - range_ratio))), math.ceil(input_len * (1 + range_ratio))
    out_lo, out_hi = max(1, math.floor(output_len * (1 - range_ratio))), math.ceil(output_len * (1 + range_ratio))
    ins = rng.integers(in_lo, in_hi + 1, size=n)
    outs = rng.integers(out_lo, out_hi + 1, size=n)
    prefix = rng.integers(100, vocab_size - 100, size=prefix_len).tolist() if prefix_len > 0 else []
    return [SampleRequest(prefix + rng.integers(100, vocab_size - 100, size=int(i)).tolist(), int(o))
            for i, o in zip(ins, outs)]


def lognormal_lengths(rng: np.random.Generator, n: int, median: float, lo: int, hi: int) -> np.ndarray:
    return np.clip(np.round(rng.lognormal(np.log(median), LOGNORMAL_SIGMA, n)), lo, hi).astype(int)


def lognormal_requests(n: int, vocab_size: int, seed: int = 0) -> list[SampleRequest]:
    rng = np.random.default_rng(seed)
    ins = lognormal_lengths(rng, n, 200, 16, 1024)
    outs = lognormal_lengths(rng, n, 150, 16, 512)
    return [SampleRequest(rng.integers(100, vocab_size - 100, size=int(i)).tolist(), int(o))
            for i, o in zip(ins, outs)]


def chitchat_path(path: str | None = None) -> str:
    """The chitchat file: ``path``, else ``$PAGEDSERVE_CHITCHAT_DATASET``, else the wheel's ``dataset.json``."""
    path = path or os.environ.get(CHITCHAT_ENV) or None
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"chitchat dataset file {path!r} does not exist (the dataset path or "
                                    f"${CHITCHAT_ENV})")
        return path
    try:
        files = importlib.metadata.files("chitchat-dataset") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = next((str(f.locate()) for f in files if f.name == "dataset.json"), None)
    if found is None:
        raise FileNotFoundError("dataset chitchat needs `pip install --no-deps chitchat-dataset==0.9.0`, or "
                                f"${CHITCHAT_ENV} naming its dataset.json or an extract of it")
    return found


def read_chitchat(path: str | None = None) -> tuple[dict[str, tuple[str, ...]], dict | None]:
    """Each conversation's lines by conversation id, in the file's order, and the extract's header
    (``None`` for the wheel's whole file).

    The wheel's ``dataset.json`` maps an id to ``{"messages": [[{"text": ...}, ...], ...]}`` (one
    inner list per turn of a speaker). An extract (``bench/carry/chitchat``, made by ``python -m bench
    --prepare``) is ``{"extract": {header}, "conversations": {same mapping}}``: some conversations in an
    order that its header describes."""
    path = chitchat_path(path)
    with open(path) as fh:
        data = json.load(fh)
    header = None
    if isinstance(data, dict) and isinstance(data.get("extract"), dict):
        header, data = data["extract"], data.get("conversations")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a chitchat dataset (an object of conversations)")
    convs = {}
    for cid, conv in data.items():
        msgs = (conv.get("messages") or []) if isinstance(conv, dict) else []
        lines = tuple(m["text"] for msg in msgs for m in msg if isinstance(m, dict) and m.get("text"))
        if lines:
            convs[cid] = lines
    return convs, header


def chitchat_conversations(path: str | None = None) -> tuple[tuple[str, ...], ...]:
    """Each conversation's lines, from the wheel's data file (the package itself is never imported)
    or the file :func:`chitchat_path` names."""
    return _chitchat_conversations(chitchat_path(path))


@lru_cache(maxsize=2)
def _chitchat_conversations(path: str) -> tuple[tuple[str, ...], ...]:
    return tuple(read_chitchat(path)[0].values())


def chitchat_requests(n: int, tokenizer: Any, seed: int = 0) -> list[SampleRequest]:
    if tokenizer is None:
        raise ValueError("dataset chitchat needs the model's tokenizer (--tokenizer)")
    convs = chitchat_conversations()
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(convs))[:n]
    outs = lognormal_lengths(rng, len(idx), 150, 16, 512)
    reqs = []
    for i, o in zip(idx, outs):
        text = "\n".join(convs[i])[:CHITCHAT_MAX_CHARS]
        ids = tokenizer.encode(text)[:CHITCHAT_MAX_TOKENS]
        reqs.append(SampleRequest(ids, int(o), prompt_text=text))
    return reqs


def sample_requests(name: str, num_prompts: int, vocab_size: int, tokenizer: Any = None, seed: int = 0,
                    random_input_len: int = 1024, random_output_len: int = 128, random_range_ratio: float = 0.0,
                    random_prefix_len: int = 0) -> list[SampleRequest]:
    if num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {num_prompts}")
    if name == "random":
        return random_requests(num_prompts, vocab_size, random_input_len, random_output_len, random_range_ratio,
                               random_prefix_len, seed)
    if name == "lognormal":
        return lognormal_requests(num_prompts, vocab_size, seed)
    if name == "chitchat":
        return chitchat_requests(num_prompts, tokenizer, seed)
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")


def requests_from_args(args: argparse.Namespace, vocab_size: int, tokenizer: Any = None) -> list[SampleRequest]:
    """The dataset selected by :func:`add_dataset_args` flags."""
    return sample_requests(args.dataset, args.num_prompts, vocab_size, tokenizer, args.dataset_seed,
                           args.random_input_len, args.random_output_len, args.random_range_ratio,
                           args.random_prefix_len)
