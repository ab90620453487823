"""The tool-parser interface and the call record."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any


def new_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=new_call_id)

    def to_json(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def call_from_obj(obj: Any, args_keys: tuple[str, ...] = ("arguments", "parameters")) -> ToolCall | None:
    """``{"name": ..., "arguments" | "parameters": {...}}`` → ToolCall, else None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = next((obj[k] for k in args_keys if k in obj), {})
    return ToolCall(obj["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False))


def json_values(text: str) -> list[tuple[Any, int, int]]:
    """Every top-level JSON value in ``text`` that starts with ``{`` or ``[``: (value, start, end)."""
    dec = json.JSONDecoder()
    out, i = [], 0
    while i < len(text):
        if text[i] in "{[":
            try:
                value, end = dec.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            out.append((value, i, end))
            i = end
        else:
            i += 1
    return out


def top_objects(text: str, start: int = 0) -> list[tuple[int, int]]:
    """Spans [s, e) of the complete JSON objects in ``text[start:]`` that are not nested in another
    object (they may sit in an array): the candidate calls of a text still being generated. Strings
    and escapes are skipped, so a ``{"name": ...}`` inside a call's arguments is never one."""
    spans, stack, in_str, esc, obj_start = [], [], False, False, -1
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = bool(stack)  # quotes outside JSON (plain text) do not open strings
        elif ch in "{[":
            if ch == "{" and "{" not in stack:
                obj_start = i
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
            if ch == "}" and "{" not in stack and obj_start >= 0:
                spans.append((obj_start, i + 1))
                obj_start = -1
    return spans


def split_calls(text: str, start: int, calls: list[ToolCall]) -> tuple[str | None, list[ToolCall]]:
    """(content before the first call or None, calls); the whole text as content when no call parsed."""
    if not calls:
        return text, []
    return text[:start].strip() or None, calls


def calls_in_spans(text: str, spans: list[tuple[int, int]]) -> list[ToolCall]:
    out = []
    for s, e in spans:
        try:
            call = call_from_obj(json.loads(text[s:e]))
        except ValueError:
            call = None
        if call is not None:
            out.append(call)
    return out


class ToolParser:
    #: text that begins a tool call (streaming holds text back once it appears)
    start_marker: str = ""
    #: the marker is a special token: the detokenizer must keep special tokens
    keeps_special_tokens: bool = False

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """The whole output → (content without the calls, or None; the calls)."""
        raise NotImplementedError

    def stream_calls(self, text: str) -> list[ToolCall]:
        """The calls already complete in a text still being generated (their JSON objects closed),
        in order; streaming sends each as soon as it is here."""
        start = self.call_started(text)
        return [] if start < 0 else calls_in_spans(text, top_objects(text, start))

    def held(self, text: str) -> int:
        """How many trailing characters of ``text`` (no call started yet) to hold back from the
        content: a marker may be arriving."""
        marker = self.start_marker
        for k in range(min(len(marker) - 1, len(text)), 0, -1):
            if text.endswith(marker[:k]):
                return k
        return 0

    def call_started(self, text: str) -> int:
        """Index where a tool call begins in ``text`` (-1: none yet)."""
        return text.find(self.start_marker) if self.start_marker else -1
