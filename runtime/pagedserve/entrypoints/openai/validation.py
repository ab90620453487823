"""A small JSON-schema-style validator for request bodies.

Strict JSON parsing (:func:`parse_json_body`) and checking of a parsed body against a table of
per-field schemas (:func:`validate_body`). Supports the subset of JSON Schema the request
schemas in :mod:`.protocol` use (``type``, ``enum``, bounds, ``maxLength``, ``items``,
``properties``/``required``/``additionalProperties``, ``anyOf``). Errors are HTTP 400
:class:`~.errors.APIError` naming the offending field (``param``), e.g. ``messages[0].role``.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from pagedserve.entrypoints.openai.errors import bad_request


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
    if _SURROGATE_ESCAPE.search(raw):  # \ud800-\udfff: a valid pair is fine, a lone half is not text
        path = _lone_surrogate_path(body, "")
        if path is not None:
            raise bad_request(f"{path or 'the request body'} contains a lone UTF-16 surrogate (an unpaired "
                              "\\ud800-\\udfff escape), which is not valid Unicode text", param=path or None)
    return body


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate_path(v: Any, path: str) -> str | None:
    """The path of the first string (value or key) holding a lone surrogate, else None."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(v, list):
        for i, x in enumerate(v):
            hit = _lone_surrogate_path(x, f"{path}[{i}]")
            if hit is not None:
                return hit
    elif isinstance(v, dict):
        for k, x in v.items():
            sub = f"{path}.{k}" if path else str(k)
            if _lone_surrogate_path(k, sub) is not None:
                return path or None
            hit = _lone_surrogate_path(x, sub)
            if hit is not None:
                return hit
    return None


#: Python type → JSON type name; bool before int (a bool is an int in Python)
_JSON_TYPES = ((type(None), "null"), (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
               (list, "array"), (dict, "object"))


def _jtype(v: Any) -> str:
    return next((name for t, name in _JSON_TYPES if isinstance(v, t)), type(v).__name__)


def _type_ok(kind: str, v: Any) -> bool:
    """Whether ``v`` is of JSON type ``kind`` ("number" takes integers too, but not NaN / inf)."""
    if kind == "number":
        return _jtype(v) in ("integer", "number") and math.isfinite(v)
    return _jtype(v) == kind


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
