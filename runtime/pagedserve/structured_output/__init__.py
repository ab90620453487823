"""Structured output (JSON schema, regex, choice, EBNF grammar) with xgrammar.

The frontend checks a request's spec (:mod:`.validate`); the engine core compiles it against the
model's vocabulary in a thread pool (LRU cache keyed by the spec, :mod:`.manager`) while the running
batch keeps stepping, gives each request its own grammar matcher (:mod:`.request_grammar`), fills a
token bitmask per step that the sampler applies on the device (``layers/sampler.py``), and advances
the matcher with each accepted token.

xgrammar is an optional dependency (``pip install 'pagedserve[structured]'``); without it every
other feature works and a structured-output request gets a clear 400.
"""
from __future__ import annotations

MISSING_MESSAGE = ("structured output (response_format json_schema / json_object, structured_outputs, guided_*, "
                   "tool_choice 'required' or a named function) needs the xgrammar package, which is not "
                   "installed on this server (pip install 'pagedserve[structured]')")


def is_available() -> bool:
    try:
        import xgrammar  # noqa: F401
    except ImportError:
        return False
    return True
