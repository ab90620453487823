"""Sampling parameters for text generation, shaped like vLLM's ``SamplingParams``."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

_GREEDY_EPS = 1e-5


@dataclass
class StructuredOutputsParams:
    """Constrained decoding (vLLM's ``structured_outputs``): exactly one of ``json`` (a JSON schema),
    ``regex``, ``choice`` (one of these strings), ``grammar`` (EBNF, xgrammar's dialect) or
    ``json_object`` (any JSON object). Enforced by a token bitmask from a grammar engine
    (``pagedserve.structured_output``, xgrammar)."""

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False

    def __post_init__(self) -> None:
        kinds = [k for k in ("json", "regex", "choice", "grammar", "json_object") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("structured_outputs must set exactly one of json, regex, choice, grammar or "
                             f"json_object, got {', '.join(kinds) or 'none'}")
        if isinstance(self.json, dict):
            self.json = json.dumps(self.json)
        if self.choice is not None:
            if not isinstance(self.choice, list) or not all(isinstance(c, str) and c for c in self.choice):
                raise ValueError("structured_outputs.choice must be a non-empty list of non-empty strings")

    @property
    def kind(self) -> str:
        return next(k for k in ("json", "regex", "choice", "grammar", "json_object") if getattr(self, k))

    def key(self) -> tuple:
        """The compiled-grammar cache key: the kind, its text and the whitespace rule."""
        value = getattr(self, self.kind)
        return (self.kind, tuple(value) if isinstance(value, list) else value, self.disable_any_whitespace)


@dataclass
class SamplingParams:
    """How to sample the tokens of one completion.

    Invalid values raise :class:`ValueError` naming the offending field.
    ``temperature=0`` means greedy decoding; ``seed`` makes one request reproducible
    regardless of what it is batched with.
    """

    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    output_kind: str = "final"  # "final" | "delta" | "cumulative" (streaming)
    # Beam search in the engine core (HF transformers' rules): ``beam_width`` beams (default
    # ``best_of``, itself defaulting to ``n``), the ``n`` best hypotheses are returned.
    use_beam_search: bool = False
    beam_width: int | None = None
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    # Prefix-cache isolation: requests only share cached blocks with requests of the same salt.
    cache_salt: str | None = None
    # vLLM's logits controls: token id → bias added to its logit (-100..100), the only tokens allowed,
    # and words never to complete (tokenized by the frontend into ``bad_words_token_ids``)
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    bad_words_token_ids: list[list[int]] | None = None
    structured_outputs: StructuredOutputsParams | None = None
    # keep only the last k prompt tokens (vLLM's truncate_prompt_tokens; applied by the frontend)
    truncate_prompt_tokens: int | None = None
    # Filled by the engine: stop tokens of the model (eos ids) when ignore_eos is False.
    all_stop_token_ids: set[int] = field(default_factory=set, repr=False)
    # Set by the engine's input processor on the per-child copies of an ``n > 1`` or beam-search
    # request: (parent request id, child index, n, "sample" | "beam"). The engine core uses it to
    # prefill the prompt once and fork the children (copy-on-write), or to run one beam group.
    child_of: tuple[str, int, int, str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k is None or self.top_k == -1:
            self.top_k = 0  # vLLM uses -1 (and now 0) for "disabled"
        if self.best_of is None:
            self.best_of = self.n
        self._verify()
        if self.temperature < _GREEDY_EPS:
            # Greedy: the filters and the seed have no effect.
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
        self.all_stop_token_ids = set(self.stop_token_ids)

    # -- validation ---------------------------------------------------------------------------
    def _verify(self) -> None:
        _int("n", self.n, lo=1, hi=1024)
        _int("best_of", self.best_of, lo=self.n, hi=1024, lo_msg="must be >= n")
        _num("presence_penalty", self.presence_penalty, lo=-2.0, hi=2.0)
        _num("frequency_penalty", self.frequency_penalty, lo=-2.0, hi=2.0)
        _num("repetition_penalty", self.repetition_penalty, lo=0.0, lo_open=True, hi=100.0)
        _num("temperature", self.temperature, lo=0.0, hi=100.0)
        _num("top_p", self.top_p, lo=0.0, lo_open=True, hi=1.0)
        _int("top_k", self.top_k, lo=0, hi=2**31 - 1, lo_msg="must be -1 (disabled), 0 (disabled) or positive")
        _num("min_p", self.min_p, lo=0.0, hi=1.0)
        if self.seed is not None:
            _int("seed", self.seed, lo=-(2**63), hi=2**64 - 1)
        if self.max_tokens is not None:
            _int("max_tokens", self.max_tokens, lo=1, hi=2**31 - 1)
        _int("min_tokens", self.min_tokens, lo=0, hi=2**31 - 1)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be <= max_tokens={self.max_tokens}, got {self.min_tokens}")
        if self.logprobs is not None:
            _int("logprobs", self.logprobs, lo=0, hi=1024)
        if self.prompt_logprobs is not None:
            _int("prompt_logprobs", self.prompt_logprobs, lo=0, hi=1024)
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop must contain non-empty strings, got {s!r}")
        for t in self.stop_token_ids:
            _int("stop_token_ids", t, lo=0, hi=2**31 - 1)
        if self.output_kind not in ("final", "delta", "cumulative"):
            raise ValueError(f"output_kind must be final, delta or cumulative, got {self.output_kind!r}")
        if self.cache_salt is not None and (not isinstance(self.cache_salt, str) or not self.cache_salt):
            raise ValueError(f"cache_salt must be a non-empty string, got {self.cache_salt!r}")
        if self.beam_width is not None:
            _int("beam_width", self.beam_width, lo=1, hi=256)
        if self.logit_bias is not None:
            for t, b in self.logit_bias.items():
                _int("logit_bias", t, lo=0, hi=2**31 - 1)
                _num("logit_bias", b, lo=-100.0, hi=100.0)
        if self.allowed_token_ids is not None:
            if not self.allowed_token_ids:
                raise ValueError("allowed_token_ids must not be empty")
            for t in self.allowed_token_ids:
                _int("allowed_token_ids", t, lo=0, hi=2**31 - 1)
        if self.truncate_prompt_tokens is not None:
            _int("truncate_prompt_tokens", self.truncate_prompt_tokens, lo=1, hi=2**31 - 1)
        if self.use_beam_search:
            self._verify_beam_search()

    def _verify_beam_search(self) -> None:
        width = self.beam_width if self.beam_width is not None else self.best_of
        if width < self.n:
            raise ValueError(f"beam_width must be >= n={self.n} (the number of returned beams), got {width}")
        if width > 256:
            raise ValueError(f"beam_width must be <= 256, got {width}")
        _num("length_penalty", self.length_penalty, lo=-100.0, hi=100.0)
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")
        if self.temperature >= _GREEDY_EPS:
            raise ValueError(f"temperature must be 0 with use_beam_search (beam search is deterministic), "
                             f"got {self.temperature}")
        for name, value, neutral in (("top_p", self.top_p, 1.0), ("top_k", self.top_k, 0), ("min_p", self.min_p, 0.0),
                                     ("repetition_penalty", self.repetition_penalty, 1.0),
                                     ("presence_penalty", self.presence_penalty, 0.0),
                                     ("frequency_penalty", self.frequency_penalty, 0.0),
                                     ("min_tokens", self.min_tokens, 0)):
            if value != neutral:
                raise ValueError(f"{name} is not supported with use_beam_search (got {value})")
        if self.logprobs is not None or self.prompt_logprobs is not None:
            raise ValueError("logprobs / prompt_logprobs are not supported with use_beam_search; each returned "
                             "beam carries its cumulative_logprob")
        for name in ("structured_outputs", "logit_bias", "allowed_token_ids", "bad_words"):
            if getattr(self, name):
                raise ValueError(f"{name} is not supported with use_beam_search")

    # -- helpers ------------------------------------------------------------------------------
    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    @property
    def needs_host_tokens(self) -> bool:
        """The next step needs this step's tokens on the host: beam search picks its candidates there
        and penalties count every generated token, a grammar advances with each token, a bad word of
        several tokens is banned by the tokens before it (async scheduling pauses while such a request runs)."""
        return (self.use_beam_search or self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0 or self.structured_outputs is not None
                or bool(self.bad_words_token_ids and any(len(w) > 1 for w in self.bad_words_token_ids)))

    @property
    def num_beams(self) -> int:
        """The beam width of a beam-search request (``beam_width``, else ``best_of``)."""
        return self.beam_width if self.beam_width is not None else self.best_of

    def clone(self, **changes: Any) -> "SamplingParams":
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        values.update(changes)
        sp = SamplingParams(**values)
        sp.all_stop_token_ids = set(self.all_stop_token_ids) | set(sp.stop_token_ids or [])
        return sp

    def max_stop_len(self) -> int:
        return max((len(s) for s in self.stop), default=0)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(name: str, v: Any, lo: int, hi: int, lo_msg: str | None = None) -> None:
    if not _is_int(v):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if v < lo:
        raise ValueError(f"{name} {lo_msg or f'must be >= {lo}'}, got {v}")
    if v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")


def _num(name: str, v: Any, lo: float, hi: float, lo_open: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise ValueError(f"{name} must be a number, got {v!r}")
    if v < lo or (lo_open and v == lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v}")
    if v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")


@dataclass
class BeamSearchParams:
    """Parameters of :meth:`LLM.beam_search` (vLLM's names): ``beam_width`` beams, scored like HF
    transformers' ``generate(num_beams=..., length_penalty=..., early_stopping=...)``."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    include_stop_str_in_output: bool = False
    cache_salt: str | None = None

    def to_sampling_params(self, n: int | None = None) -> SamplingParams:
        if self.temperature != 0.0:
            raise ValueError("temperature: beam search here is deterministic; only temperature=0 is supported")
        return SamplingParams(n=n or self.beam_width, beam_width=self.beam_width, use_beam_search=True,
                              temperature=0.0, max_tokens=self.max_tokens, ignore_eos=self.ignore_eos,
                              length_penalty=self.length_penalty, early_stopping=self.early_stopping,
                              include_stop_str_in_output=self.include_stop_str_in_output,
                              cache_salt=self.cache_salt)
