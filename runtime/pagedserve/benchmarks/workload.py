"""Offline benchmark workloads: (prompt token ids, output length) pairs, seeded.

- ``lognormal``: input lengths lognormal with median ~200 (clipped 16–1024), output lengths median
  ~150 (clipped 16–512), random token ids; every request generates exactly its output length.
- ``chitchat``: real conversations from the ``chitchat-dataset`` wheel (MIT), tokenized with the
  model's tokenizer; output lengths drawn as in ``lognormal``.
"""
from __future__ import annotations

import numpy as np

LOGNORMAL_SIGMA = 0.6


def lognormal_lengths(n: int, seed: int, median: float, lo: int, hi: int, rng: np.random.Generator | None = None
                      ) -> np.ndarray:
    rng = rng or np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(median), LOGNORMAL_SIGMA, n)), lo, hi).astype(int)


def lognormal_workload(n: int, seed: int, vocab_size: int) -> list[tuple[list[int], int]]:
    rng = np.random.default_rng(seed)
    ins = lognormal_lengths(n, seed, 200, 16, 1024, rng)
    outs = lognormal_lengths(n, seed, 150, 16, 512, rng)
    return [(rng.integers(100, vocab_size - 100, size=int(i)).tolist(), int(o)) for i, o in zip(ins, outs)]


def chitchat_workload(n: int, seed: int, tokenizer) -> list[tuple[list[int], int]]:
    from pagedserve.benchmarks.chitchat import load_conversations

    rng = np.random.default_rng(seed)
    convs = load_conversations()
    idx = rng.permutation(len(convs))[:n]
    outs = lognormal_lengths(len(idx), seed, 150, 16, 512, rng)
    reqs = []
    for i, o in zip(idx, outs):
        text = "\n".join(convs[i])[:4000]
        ids = tokenizer.encode(text)[:1024]
        reqs.append((ids, int(o)))
    return reqs


def make_workload(name: str, n: int, seed: int, vocab_size: int, tokenizer=None) -> list[tuple[list[int], int]]:
    if name == "lognormal":
        return lognormal_workload(n, seed, vocab_size)
    if name == "chitchat":
        if tokenizer is None:
            raise ValueError("dataset chitchat needs the model's tokenizer")
        return chitchat_workload(n, seed, tokenizer)
    raise ValueError(f"dataset must be lognormal or chitchat, got {name!r}")
