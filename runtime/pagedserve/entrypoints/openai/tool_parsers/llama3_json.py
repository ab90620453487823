"""Llama 3.x JSON format: ``{"name": ..., "parameters": {...}}`` (optionally after ``<|python_tag|>``;
several calls separated by ``;``). The output is a call only if it starts with one."""
from __future__ import annotations

from pagedserve.entrypoints.openai.tool_parsers.base import ToolCall, ToolParser, call_from_obj, json_values

_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    start_marker = "{"

    def call_started(self, text: str) -> int:
        stripped = text.lstrip()
        if stripped.startswith(_TAG) or stripped.startswith("{"):
            return len(text) - len(stripped)
        return -1

    def held(self, text: str) -> int:
        stripped = text.lstrip()
        return len(text) if stripped and _TAG.startswith(stripped) else 0

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        body = text.strip()
        if body.startswith(_TAG):
            body = body[len(_TAG):].lstrip()
        if not body.startswith("{"):
            return text, []
        calls = [c for v, _, _ in json_values(body) if (c := call_from_obj(v)) is not None]
        return (None, calls) if calls else (text, [])
