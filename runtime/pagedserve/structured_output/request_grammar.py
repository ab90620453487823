"""One request's grammar state in the engine core: its compiled grammar (a future while it
compiles) and its own matcher, advanced by each accepted token."""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import torch


class RequestGrammar:
    def __init__(self, compiled: Future, owner: Any = None) -> None:
        self._compiled = compiled
        self._owner = owner  # the manager: its keep_mask clears special tokens
        self.matcher: Any = None
        self.num_accepted = 0  # tokens the matcher has consumed (== the request's output tokens)
        self.error: str | None = None

    @property
    def ready(self) -> bool:
        """Compiled (or failed): the request may be scheduled."""
        if self.matcher is not None or self.error is not None:
            return True
        if not self._compiled.done():
            return False
        try:
            import xgrammar as xgr

            self.matcher = xgr.GrammarMatcher(self._compiled.result())
        except Exception as e:  # noqa: BLE001 — reported as the request's failure
            self.error = f"the grammar failed to compile: {e}"
        return True

    def replay(self, tokens: list[int]) -> None:
        """Bring the matcher level with the request's output tokens (a request that arrives with
        output already, or any drift): accept those it has not seen yet."""
        for t in tokens[self.num_accepted:]:
            self.accept(t)

    def accept(self, token: int) -> bool:
        """Advance by one sampled token; False if the grammar rejects it (it then stays put)."""
        if self.matcher is None or self.matcher.is_terminated():
            return False
        ok = self.matcher.accept_token(token)
        if ok:
            self.num_accepted += 1
        return ok

    def rollback(self, num_tokens: int) -> None:
        """Forget the last ``num_tokens`` accepted tokens (tokens taken back from the request)."""
        if num_tokens > 0 and self.matcher is not None:
            self.matcher.rollback(num_tokens)
            self.num_accepted -= num_tokens

    @property
    def is_terminated(self) -> bool:
        return self.matcher is not None and self.matcher.is_terminated()

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Row ``row`` of the int32 bitmask [B, ceil(V/32)]: bit t set = token t allowed next."""
        self.matcher.fill_next_token_bitmask(bitmask, row)
        keep = getattr(self._owner, "keep_mask", None)
        if keep is not None:
            bitmask[row] &= keep
