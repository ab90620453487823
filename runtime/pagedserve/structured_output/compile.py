"""A structured-output spec → xgrammar grammar (shared by the frontend's check and the core's compiler)."""
from __future__ import annotations

import json
from typing import Any

from pagedserve.sampling_params import StructuredOutputsParams


def choice_ebnf(choices: list[str]) -> str:
    """``root ::= "a" | "b"``: JSON string escapes are valid EBNF string escapes."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def grammar_of(spec: StructuredOutputsParams) -> Any:
    """The (uncompiled) xgrammar ``Grammar``; raises ValueError naming what is wrong."""
    import xgrammar as xgr

    kind = spec.kind
    try:
        if kind == "json":
            return xgr.Grammar.from_json_schema(spec.json, any_whitespace=not spec.disable_any_whitespace,
                                                strict_mode=True)
        if kind == "json_object":
            return xgr.Grammar.builtin_json_grammar()
        if kind == "regex":
            return xgr.Grammar.from_regex(spec.regex)
        if kind == "choice":
            return xgr.Grammar.from_ebnf(choice_ebnf(spec.choice))
        return xgr.Grammar.from_ebnf(spec.grammar)
    except Exception as e:  # xgrammar raises RuntimeError / InvalidJSONError with its parser's message
        raise ValueError(f"invalid {kind}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
                         ) from None


def compile_spec(compiler: Any, spec: StructuredOutputsParams) -> Any:
    """A ``CompiledGrammar`` for ``spec`` (token masks against the compiler's vocabulary)."""
    if spec.kind == "json":
        return compiler.compile_json_schema(spec.json, any_whitespace=not spec.disable_any_whitespace,
                                            strict_mode=True)
    if spec.kind == "json_object":
        return compiler.compile_builtin_json_grammar()
    if spec.kind == "regex":
        return compiler.compile_regex(spec.regex)
    return compiler.compile_grammar(choice_ebnf(spec.choice) if spec.kind == "choice" else spec.grammar)
