"""Request bodies of the OpenAI-compatible API as JSON schemas, and a validator for them.

The same schemas are served at ``/openapi.json`` (see :mod:`.openapi`), so the description and
the checks cannot drift apart. Validation errors are HTTP 400 naming the field (``param``), e.g.
``messages[0].role``. Unknown top-level fields are rejected, as OpenAI does; vLLM's extra
sampling fields (``top_k``, ``min_p``, ``ignore_eos``, ...) are known fields here.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from pagedserve.entrypoints.openai.errors import APIError, bad_request

INT64_MIN, UINT64_MAX, INT32_MAX = -(2**63), 2**64 - 1, 2**31 - 1
MAX_LOGPROBS = 20


# -- schema builders ------------------------------------------------------------------------------
def _t(kind: str, nullable: bool, **kw: Any) -> dict:
    return {"type": [kind, "null"] if nullable else kind, **kw}


def integer(lo: int | None = None, hi: int | None = None, nullable: bool = True, **kw: Any) -> dict:
    s = _t("integer", nullable, **kw)
    if lo is not None:
        s["minimum"] = lo
    if hi is not None:
        s["maximum"] = hi
    return s


def number(lo: float | None = None, hi: float | None = None, exclusive_lo: bool = False, nullable: bool = True,
           **kw: Any) -> dict:
    s = _t("number", nullable, **kw)
    if lo is not None:
        s["exclusiveMinimum" if exclusive_lo else "minimum"] = lo
    if hi is not None:
        s["maximum"] = hi
    return s


def boolean(nullable: bool = True, **kw: Any) -> dict:
    return _t("boolean", nullable, **kw)


def string(nullable: bool = True, enum: list[str] | None = None, max_length: int | None = None, **kw: Any) -> dict:
    s = _t("string", nullable, **kw)
    if enum is not None:
        s["enum"] = list(enum) + ([None] if nullable else [])
    if max_length is not None:
        s["maxLength"] = max_length
    return s


def array(items: dict, min_items: int | None = None, max_items: int | None = None, nullable: bool = True,
          **kw: Any) -> dict:
    s = _t("array", nullable, items=items, **kw)
    if min_items is not None:
        s["minItems"] = min_items
    if max_items is not None:
        s["maxItems"] = max_items
    return s


def obj(props: dict[str, dict] | None = None, required: tuple[str, ...] = (), additional: bool | dict = False,
        nullable: bool = True, **kw: Any) -> dict:
    s = _t("object", nullable, **kw)
    if props is not None:
        s["properties"] = props
    if required:
        s["required"] = list(required)
    s["additionalProperties"] = additional
    return s


def any_of(*schemas: dict, nullable: bool = False, **kw: Any) -> dict:
    opts = list(schemas) + ([{"type": "null"}] if nullable else [])
    return {"anyOf": opts, **kw}


# -- the request schemas --------------------------------------------------------------------------
TOKEN_ID = integer(lo=0, nullable=False)
STOP = any_of(string(nullable=False), array(string(nullable=False), max_items=1024, nullable=False),
              nullable=True, description="Up to 1024 stop strings; the output stops before the first one.")

SAMPLING_FIELDS: dict[str, dict] = {
    "model": string(description="Served model name (default: the first served model)."),
    "n": integer(1, 1024, description="Number of completions per prompt."),
    "best_of": integer(1, 1024, description="Must equal n (no best-of ranking)."),
    "temperature": number(0.0, 100.0),
    "top_p": number(0.0, 1.0, exclusive_lo=True),
    "top_k": integer(-1, INT32_MAX, description="-1 or 0 disables top-k."),
    "min_p": number(0.0, 1.0),
    "presence_penalty": number(-2.0, 2.0),
    "frequency_penalty": number(-2.0, 2.0),
    "repetition_penalty": number(0.0, 100.0, exclusive_lo=True),
    "seed": integer(INT64_MIN, UINT64_MAX),
    "stop": STOP,
    "stop_token_ids": array(TOKEN_ID, max_items=1024),
    "include_stop_str_in_output": boolean(),
    "ignore_eos": boolean(),
    "min_tokens": integer(0, INT32_MAX),
    "max_tokens": integer(1, INT32_MAX),
    "skip_special_tokens": boolean(),
    "spaces_between_special_tokens": boolean(),
    "prompt_logprobs": integer(0, MAX_LOGPROBS),
    "stream": boolean(),
    "stream_options": obj({"include_usage": boolean(), "continuous_usage_stats": boolean()}),
    "user": string(max_length=4096),
    "priority": integer(INT64_MIN, 2**63 - 1, description="Lower runs first (--scheduling-policy priority)."),
    "logit_bias": obj(additional=number(-100.0, 100.0, nullable=False), description="Not supported (must be empty)."),
    "use_beam_search": boolean(description="Beam search (temperature 0); best_of is the beam width, n the "
                                           "number of beams returned."),
    "length_penalty": number(-100.0, 100.0),
    "early_stopping": any_of(boolean(nullable=False), string(nullable=False), nullable=True),
    "request_id": string(max_length=256),
    "cache_salt": string(max_length=1024, description="Prefix-cache isolation: only requests with the same salt "
                                                      "share cached blocks."),
    "add_special_tokens": boolean(),
    "echo": boolean(),
    "response_format": obj({"type": string(nullable=False, enum=["text", "json_object", "json_schema"]),
                            "json_schema": obj(additional=True)}, required=("type",)),
}

_PROMPT = any_of(
    string(nullable=False),
    array(string(nullable=False), min_items=1, nullable=False),
    array(TOKEN_ID, min_items=1, nullable=False),
    array(array(TOKEN_ID, min_items=1, nullable=False), min_items=1, nullable=False),
    description="Text, a list of texts, token ids, or a list of token-id lists.")

COMPLETION_FIELDS: dict[str, dict] = {
    **SAMPLING_FIELDS,
    "prompt": _PROMPT,
    "logprobs": integer(0, MAX_LOGPROBS, description="Number of top logprobs per token."),
    "suffix": string(description="Not supported (must be null)."),
}
COMPLETION_REQUIRED = ("prompt",)

_TEXT_PART = obj({"type": string(nullable=False), "text": string(nullable=False)}, required=("type",),
                 additional=True, nullable=False)
MESSAGE = obj({
    "role": string(nullable=False, enum=["system", "user", "assistant", "tool", "developer"]),
    "content": any_of(string(nullable=False), array(_TEXT_PART, nullable=False), nullable=True),
    "name": string(max_length=256),
    "tool_calls": array(obj(additional=True, nullable=False)),
    "tool_call_id": string(),
    "refusal": string(),
    "reasoning_content": string(),
}, required=("role",), nullable=False)

CHAT_FIELDS: dict[str, dict] = {
    **SAMPLING_FIELDS,
    "messages": array(MESSAGE, min_items=1, nullable=False),
    "max_completion_tokens": integer(1, INT32_MAX),
    "logprobs": boolean(),
    "top_logprobs": integer(0, MAX_LOGPROBS),
    "tools": array(obj(additional=True, nullable=False), description="Not supported (must be empty)."),
    "tool_choice": any_of(string(nullable=False, enum=["none", "auto", "required"]), obj(additional=True),
                          nullable=True),
    "parallel_tool_calls": boolean(),
    "functions": array(obj(additional=True, nullable=False), description="Not supported (must be empty)."),
    "function_call": any_of(string(nullable=False), obj(additional=True), nullable=True),
    "modalities": array(string(nullable=False, enum=["text"])),
    "store": boolean(),
    "metadata": obj(additional=string(nullable=False)),
    "service_tier": string(),
    "reasoning_effort": string(),
    "verbosity": string(),
    "add_generation_prompt": boolean(),
    "continue_final_message": boolean(),
    "chat_template": string(description="Needs --trust-request-chat-template on the server."),
    "chat_template_kwargs": obj(additional=True),
}
CHAT_REQUIRED = ("messages",)

TOKENIZE_FIELDS: dict[str, dict] = {
    "model": string(),
    "prompt": string(),
    "messages": array(MESSAGE, min_items=1),
    "add_special_tokens": boolean(),
    "add_generation_prompt": boolean(),
    "continue_final_message": boolean(),
    "return_token_strs": boolean(),
}
DETOKENIZE_FIELDS: dict[str, dict] = {"model": string(), "tokens": array(TOKEN_ID, nullable=False)}


# -- validation -----------------------------------------------------------------------------------
def parse_json_body(raw: bytes) -> dict:
    """Strict JSON: no NaN/Infinity, an object at the top."""
    if not raw:
        raise bad_request("the request body is empty; expected a JSON object")

    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        body = json.loads(raw, parse_constant=reject_constant)
    except RecursionError:
        raise bad_request("the JSON body is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, bad UTF-8, integer too long, NaN
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {_jtype(body)}")
    return body


def _jtype(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _type_ok(kind: str, v: Any) -> bool:
    if kind == "null":
        return v is None
    if kind == "boolean":
        return isinstance(v, bool)
    if kind == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind == "string":
        return isinstance(v, str)
    if kind == "array":
        return isinstance(v, list)
    if kind == "object":
        return isinstance(v, dict)
    return False


class _Invalid(Exception):
    def __init__(self, path: str, message: str, wrong_type: bool = False) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.wrong_type = wrong_type


def _check(v: Any, s: dict, path: str) -> None:
    if "anyOf" in s:
        errors = []
        for opt in s["anyOf"]:
            try:
                _check(v, opt, path)
                return
            except _Invalid as e:
                errors.append(e)
        # report the error of the option that got furthest (deepest path, then highest index)
        deep = [e for e in errors if e.path != path]
        if deep:
            raise max(deep, key=_progress)
        raise _Invalid(path, f"{path} must be one of: {_describe(s)}; got {_jtype(v)}")
    t = s.get("type")
    kinds = t if isinstance(t, list) else [t]
    if t is not None and not any(_type_ok(k, v) for k in kinds):
        want = " or ".join(kinds)
        raise _Invalid(path, f"{path} must be {_a(want)}, got {_jtype(v)}", wrong_type=True)
    if v is None:
        return
    if "enum" in s and v not in s["enum"]:
        opts = ", ".join(repr(e) for e in s["enum"] if e is not None)
        raise _Invalid(path, f"{path} must be one of {opts}; got {_short(v)}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "minimum" in s and v < s["minimum"]:
            raise _Invalid(path, f"{path} must be >= {s['minimum']}, got {_short(v)}")
        if "exclusiveMinimum" in s and v <= s["exclusiveMinimum"]:
            raise _Invalid(path, f"{path} must be > {s['exclusiveMinimum']}, got {_short(v)}")
        if "maximum" in s and v > s["maximum"]:
            raise _Invalid(path, f"{path} must be <= {s['maximum']}, got {_short(v)}")
    elif isinstance(v, str):
        if "maxLength" in s and len(v) > s["maxLength"]:
            raise _Invalid(path, f"{path} must be at most {s['maxLength']} characters long")
    elif isinstance(v, list):
        if "minItems" in s and len(v) < s["minItems"]:
            raise _Invalid(path, f"{path} must have at least {s['minItems']} item(s)")
        if "maxItems" in s and len(v) > s["maxItems"]:
            raise _Invalid(path, f"{path} must have at most {s['maxItems']} items")
        items = s.get("items")
        if items is not None:
            fast = _fast_item_type(items)
            if fast is not None:  # long token-id lists: one pass, no recursion
                for i, x in enumerate(v):
                    if not fast(x):
                        _check(x, items, f"{path}[{i}]")
            else:
                for i, x in enumerate(v):
                    _check(x, items, f"{path}[{i}]")
    elif isinstance(v, dict):
        props = s.get("properties", {})
        for k in s.get("required", ()):
            if k not in v:
                raise _Invalid(f"{path}.{k}", f"{path}.{k} is required")
        extra = s.get("additionalProperties", True)
        for k, x in v.items():
            sub = f"{path}.{k}"
            if k in props:
                _check(x, props[k], sub)
            elif extra is False:
                raise _Invalid(sub, f"{sub} is not a recognized field")
            elif isinstance(extra, dict):
                _check(x, extra, sub)


def _progress(e: _Invalid) -> tuple:
    nums = tuple(int(x) for x in re.findall(r"\[(\d+)\]", e.path))
    return (e.path.count(".") + len(nums), nums, not e.wrong_type)


def _fast_item_type(items: dict) -> Any:
    if items.get("type") == "integer" and set(items) <= {"type", "minimum"}:
        lo = items.get("minimum")
        return lambda x: type(x) is int and (lo is None or x >= lo)
    if items.get("type") == "string" and set(items) == {"type"}:
        return lambda x: type(x) is str
    return None


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _describe(s: dict) -> str:
    parts = []
    for opt in s["anyOf"]:
        t = opt.get("type")
        if t == "array" and isinstance(opt.get("items"), dict):
            it = opt["items"].get("type")
            parts.append(f"array of {it if isinstance(it, str) else 'items'}")
        else:
            parts.append(str(t if isinstance(t, str) else "/".join(t)))
    return ", ".join(parts)


def validate_body(body: dict, fields: dict[str, dict], required: tuple[str, ...] = ()) -> dict:
    """Check a parsed JSON body against ``fields``; raise a 400 APIError naming the field."""
    for k in required:
        if k not in body:
            raise bad_request(f"{k} is required", param=k)
    for k, v in body.items():
        s = fields.get(k)
        if s is None:
            raise bad_request(f"Unrecognized request argument supplied: {_short(k)}", param=str(k))
        try:
            _check(v, s, k)
        except _Invalid as e:
            raise bad_request(e.message, param=e.path) from None
    return body


def require_supported(body: dict) -> None:
    """Fields that are accepted by the schema but whose features are not built: fail clearly."""
    if body.get("use_beam_search"):
        from pagedserve.sampling_params import SamplingParams

        if not hasattr(SamplingParams, "num_beams"):
            raise bad_request("beam search is not supported by this engine (use_beam_search must be false)",
                              "use_beam_search")
        if body.get("stream"):
            raise bad_request("use_beam_search cannot be streamed (the beams are only known at the end)",
                              param="stream")
    if body.get("logit_bias"):
        raise bad_request("logit_bias is not supported", param="logit_bias")
    if body.get("suffix") is not None:
        raise bad_request("suffix is not supported", param="suffix")
    rf = body.get("response_format")
    if rf is not None and rf.get("type") != "text":
        raise bad_request(f"response_format type {rf.get('type')!r} is not supported (only 'text')",
                          param="response_format.type")
    for k in ("tools", "functions"):
        if body.get(k):
            raise bad_request(f"{k} (tool calling) is not supported", param=k)
    tc = body.get("tool_choice")
    if tc is not None and tc not in ("none", "auto"):
        raise bad_request("tool_choice: tool calling is not supported", param="tool_choice")
    if body.get("function_call") not in (None, "none", "auto"):
        raise bad_request("function_call: tool calling is not supported", param="function_call")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise bad_request("stream_options is only allowed when stream is true", param="stream_options")


def api_error_for(status: int, message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(status, message, param=param, code=code)
