"""Prompt lookup (n-gram) drafting: find the context's latest earlier occurrence of its own last
``n`` tokens (``n`` from ``prompt_lookup_max`` down to ``prompt_lookup_min``) and propose the tokens
that followed it. Pure host work on token ids; no model."""
from __future__ import annotations

import numpy as np


class NgramProposer:
    def __init__(self, num_speculative_tokens: int, prompt_lookup_min: int, prompt_lookup_max: int) -> None:
        self.k = num_speculative_tokens
        self.min_n = prompt_lookup_min
        self.max_n = prompt_lookup_max

    def propose(self, token_ids: list[int], max_tokens: int | None = None) -> list[int]:
        """Up to ``min(k, max_tokens)`` draft tokens continuing ``token_ids`` (empty: no match)."""
        k = self.k if max_tokens is None else min(self.k, max_tokens)
        total = len(token_ids)
        if k <= 0 or total < self.min_n + 1:
            return []
        arr = np.asarray(token_ids, dtype=np.int64)
        for n in range(min(self.max_n, total - 1), self.min_n - 1, -1):
            suffix = arr[total - n:]
            # windows arr[i:i + n] for i <= total - n - 1: each has a following token and is not the suffix
            starts = np.flatnonzero(arr[:total - n] == suffix[0])
            if starts.size == 0:
                continue
            if n > 1:
                offs = starts[:, None] + np.arange(1, n)
                starts = starts[(arr[offs] == suffix[1:]).all(axis=1)]
                if starts.size == 0:
                    continue
            follow = int(starts[-1]) + n  # the latest match
            return arr[follow:follow + k].tolist()
        return []
