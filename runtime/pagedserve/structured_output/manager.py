"""The engine core's structured-output manager: the model's vocabulary for xgrammar (loaded on the
first structured request), an LRU cache of compiled grammars keyed by the spec, and a thread pool
that compiles new ones while the running batch keeps stepping."""
from __future__ import annotations

import logging
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import torch

from pagedserve.sampling_params import StructuredOutputsParams
from pagedserve.structured_output.compile import compile_spec
from pagedserve.structured_output.request_grammar import RequestGrammar

logger = logging.getLogger(__name__)

CACHE_SIZE = 256  # compiled grammars kept (each holds token masks for its states)


def _special_tokens_off(tok: Any, vocab_size: int, stop_ids: set[int]) -> torch.Tensor:
    """A bitmask row with the tokenizer's special tokens cleared (except the stop tokens). xgrammar
    sees a special token as the text it decodes to; one that decodes to "" (``<|endoftext|>``,
    ``<|im_start|>`` when skipped) would fit every grammar state and let the model emit it forever."""
    special = set(getattr(tok, "all_special_ids", []) or [])
    special |= {i for i, t in getattr(tok, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    bits = torch.ones((vocab_size + 31) // 32 * 32, dtype=torch.bool)
    for t in special - stop_ids:
        if 0 <= t < vocab_size:
            bits[t] = False
    words = (bits.view(-1, 32).to(torch.int64) << torch.arange(32)).sum(-1)
    return words.bitwise_and(0xFFFFFFFF).to(torch.int32)


class StructuredOutputManager:
    def __init__(self, tokenizer_dir: str, vocab_size: int, stop_token_ids: list[int],
                 trust_remote_code: bool = False, max_workers: int = 2) -> None:
        self.tokenizer_dir = tokenizer_dir
        self.vocab_size = vocab_size
        self.stop_token_ids = list(stop_token_ids)
        self.trust_remote_code = trust_remote_code
        self._compiler: Any = None
        self.keep_mask: torch.Tensor | None = None  # int32 bitmask row: special tokens (not stop ones) cleared
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grammar")
        self._cache: OrderedDict[tuple, Future] = OrderedDict()
        self.num_compiled = self.num_cache_hits = 0

    def _get_compiler(self) -> Any:
        if self._compiler is None:  # runs in a pool thread: the tokenizer load does not stall the loop
            import xgrammar as xgr

            from pagedserve.tokenizer import load_tokenizer

            tok = load_tokenizer(self.tokenizer_dir, self.trust_remote_code)
            info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=self.vocab_size,
                                                      stop_token_ids=self.stop_token_ids or None)
            self.keep_mask = _special_tokens_off(tok, self.vocab_size, set(info.stop_token_ids))
            self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        return self._compiler

    def _compile(self, spec: StructuredOutputsParams) -> Any:
        grammar = compile_spec(self._get_compiler(), spec)
        self.num_compiled += 1
        return grammar

    def request_grammar(self, spec: StructuredOutputsParams) -> RequestGrammar:
        """A fresh per-request state; its grammar comes from the cache or a pool thread."""
        key = spec.key()
        fut = self._cache.get(key)
        if fut is not None and not (fut.done() and fut.exception() is not None):
            self._cache.move_to_end(key)
            self.num_cache_hits += 1
        else:
            fut = self._pool.submit(self._compile, spec)
            self._cache[key] = fut
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return RequestGrammar(fut, self)

    def wait_any(self, timeout: float) -> None:
        """Block up to ``timeout`` s for a compilation to finish (an idle core waiting on a grammar)."""
        pending = [f for f in self._cache.values() if not f.done()]
        if pending:
            wait(pending, timeout=timeout, return_when="FIRST_COMPLETED")

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
