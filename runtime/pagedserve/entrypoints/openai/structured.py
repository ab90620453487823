"""Request fields → ``StructuredOutputsParams``: OpenAI's ``response_format`` (``json_object``,
``json_schema``), vLLM's ``structured_outputs`` and the legacy ``guided_*`` fields. At most one
source per request; the spec is checked (xgrammar's parser, in a thread, cached) before admission,
so a bad schema / regex / grammar is a 400 naming the field."""
from __future__ import annotations

import asyncio
import json
from typing import Any

from pagedserve.entrypoints.openai.errors import bad_request
from pagedserve.sampling_params import StructuredOutputsParams

_LEGACY = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}


def structured_outputs_from(body: dict) -> tuple[StructuredOutputsParams | None, str | None]:
    """(spec, the request field it came from) or (None, None)."""
    sources = []
    rf = body.get("response_format")
    if rf is not None and rf.get("type") in ("json_object", "json_schema"):
        sources.append("response_format")
    if body.get("structured_outputs") is not None:
        sources.append("structured_outputs")
    sources += [k for k in _LEGACY if body.get(k) is not None]
    if not sources:
        return None, None
    if len(sources) > 1:
        raise bad_request(f"give only one of {', '.join(sources)} (each constrains the output)", param=sources[1])
    src = sources[0]
    try:
        if src == "response_format":
            if rf["type"] == "json_object":
                return StructuredOutputsParams(json_object=True), src
            schema = (rf.get("json_schema") or {}).get("schema")
            if schema is None:
                raise bad_request("response_format.json_schema.schema is required", param="response_format.json_schema")
            return StructuredOutputsParams(json=schema), "response_format.json_schema.schema"
        if src == "structured_outputs":
            so = body["structured_outputs"]
            kw = {k: so[k] for k in ("json", "regex", "choice", "grammar", "json_object") if so.get(k) is not None}
            return StructuredOutputsParams(**kw, disable_any_whitespace=bool(so.get("disable_any_whitespace"))), src
        value = body[src]
        return StructuredOutputsParams(**{_LEGACY[src]: value}), src
    except ValueError as e:
        raise bad_request(str(e), param=src) from None


async def check_structured_outputs(spec: StructuredOutputsParams, param: str) -> None:
    """Parse the spec with xgrammar off the event loop; 400 naming ``param`` if it is invalid."""
    from pagedserve.structured_output.validate import check_spec

    if spec.kind == "json":
        try:
            json.loads(spec.json)  # type: ignore[arg-type]
        except ValueError as e:
            raise bad_request(f"{param} is not valid JSON: {e}", param=param) from None
    try:
        await asyncio.to_thread(check_spec, spec)
    except RuntimeError as e:  # xgrammar missing
        raise bad_request(str(e), param=param, code="structured_outputs_unavailable") from None
    except ValueError as e:
        raise bad_request(f"{param}: {e}", param=param) from None


def parse_logit_bias(body: dict, vocab_size: int) -> dict[int, float] | None:
    lb = body.get("logit_bias")
    if not lb:
        return None
    out: dict[int, float] = {}
    for k, v in lb.items():
        try:
            t = int(k)
        except ValueError:
            raise bad_request(f"logit_bias keys must be token ids (integers as strings), got {k!r}",
                              param=f"logit_bias.{k}") from None
        if not 0 <= t < vocab_size:
            raise bad_request(f"logit_bias: token id {t} is outside the vocabulary [0, {vocab_size})",
                              param=f"logit_bias.{k}")
        out[t] = float(v)
    return out


def bad_words_token_ids(tokenizer: Any, words: list[str]) -> list[list[int]]:
    """Each word as it would appear at the start of the text and after a space (as vLLM does)."""
    out: list[list[int]] = []
    for w in words:
        for variant in (w, " " + w.lstrip()):
            ids = tokenizer.encode(variant, add_special_tokens=False)
            if ids and ids not in out:
                out.append(ids)
    return out
