"""The frontend's check of a structured-output spec (no vocabulary needed: fast), cached by spec."""
from __future__ import annotations

from functools import lru_cache

from pagedserve.sampling_params import StructuredOutputsParams
from pagedserve.structured_output import MISSING_MESSAGE, is_available
from pagedserve.structured_output.compile import grammar_of


@lru_cache(maxsize=512)
def _check(key: tuple) -> str | None:
    kind, value, no_ws = key
    spec = StructuredOutputsParams(**{kind: list(value) if kind == "choice" else value,
                                      "disable_any_whitespace": no_ws})
    try:
        grammar_of(spec)
    except ValueError as e:
        return str(e)
    return None


def check_spec(spec: StructuredOutputsParams) -> None:
    """Raise ValueError (the message names the problem) if the spec cannot be compiled, or
    RuntimeError if xgrammar is not installed."""
    if not is_available():
        raise RuntimeError(MISSING_MESSAGE)
    err = _check(spec.key())
    if err is not None:
        raise ValueError(err)
