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


def split_calls(text: str, start: int, calls: list[ToolCall]) -> tuple[str | None, list[ToolCall]]:
    """(content before the first call or None, calls); the whole text as content when no call parsed."""
    if not calls:
        return text, []
    return text[:start].strip() or None, calls


class ToolParser:
    #: text that begins a tool call (streaming holds text back once it appears)
    start_marker: str = ""
    #: the marker is a special token: the detokenizer must keep special tokens
    keeps_special_tokens: bool = False

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """The whole output → (content without the calls, or None; the calls)."""
        raise NotImplementedError

    def call_started(self, text: str) -> int:
        """Index where a tool call begins in ``text`` (-1: none yet)."""
        return text.find(self.start_marker) if self.start_marker else -1
