"""``triton.jit`` without value specialisation for the arguments that change from step to step.

Triton compiles a kernel variant per *specialisation key*: an integer argument equal to 1 or
divisible by 16, a pointer aligned to 16 bytes. For a serving engine some of these change with
every batch: the block table's width (the step's longest context in blocks), its row offset
when a mixed step's prefill part is a slice after the decodes, the split count of split-KV
decode. Each new combination compiled a new variant in the middle of serving (~0.3-1 s each on
the H200: the first 256-request run on a fresh machine was ~20% slower than the next). Leaving
those arguments unspecialised keeps one variant per kernel configuration, which the startup
warm-up compiles. None of them feeds a vectorised access, so nothing is lost.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import triton

_JIT_PARAMS = inspect.signature(triton.jit).parameters


def jit_unspecialized(*names: str) -> Callable[[Any], Any]:
    """``@triton.jit`` that neither specialises ``names`` on the value 1 nor on 16-alignment
    (where this Triton offers the options; older ones fall back to plain ``triton.jit``)."""
    kw = {k: list(names) for k in ("do_not_specialize", "do_not_specialize_on_alignment") if k in _JIT_PARAMS}
    return triton.jit(**kw)
