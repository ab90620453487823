"""Incremental detokenization with stop strings.

Text is produced token by token with the tokenizers library's ``DecodeStream`` (correct for
multi-byte UTF-8 and byte-level BPE: a partial character yields nothing until it completes),
primed with the prompt's last tokens so word-boundary spaces come out right. Stop strings are
searched across token boundaries; the matched stop string is not part of the output, and while
streaming the last ``max_stop_len - 1`` characters are held back so a stop string is never sent
half-way.
"""
from __future__ import annotations

from tokenizers.decoders import DecodeStream

from pagedserve.sampling_params import SamplingParams

_PRIME_TOKENS = 6


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.backend = tokenizer.backend_tokenizer  # the fast (Rust) tokenizer
        self.stream = DecodeStream(ids=list(prompt_token_ids[-_PRIME_TOKENS:]),
                                   skip_special_tokens=params.skip_special_tokens)
        self.stop = list(params.stop or [])
        self.include_stop = params.include_stop_str_in_output
        self.hold = max((len(s) for s in self.stop), default=1) - 1 if self.stop and not self.include_stop else 0
        self.text = ""
        self.sent = 0  # characters already returned by delta()
        self.stop_index = -1  # index, in the last update's tokens, of the token that completed a stop string

    def update(self, token_ids: list[int], check_stop: bool = True) -> str | None:
        """Append tokens; return the stop string if one completed (the text is cut before it; the
        tokens after the one that completed it, ``stop_index``, are not decoded)."""
        for i, tok in enumerate(token_ids):
            piece = self.stream.step(self.backend, tok)
            if not piece:
                continue
            prev_len = len(self.text)
            self.text += piece
            if check_stop and self.stop:
                hit = self._find_stop(prev_len, len(piece))
                if hit is not None:
                    self.stop_index = i
                    return hit
        return None

    def _find_stop(self, prev_len: int, piece_len: int) -> str | None:
        for s in self.stop:
            start = max(0, prev_len - len(s) + 1)
            idx = self.text.find(s, start)
            if idx != -1:
                self.text = self.text[:idx + len(s)] if self.include_stop else self.text[:idx]
                return s
        return None

    def delta(self, finished: bool) -> str:
        """New text since the last call, holding back a possible partial stop string."""
        end = len(self.text) if finished else max(self.sent, len(self.text) - self.hold)
        out = self.text[self.sent:end]
        self.sent = end
        return out

    def visible_text(self, finished: bool) -> str:
        return self.text if finished else self.text[:max(0, len(self.text) - self.hold)]
