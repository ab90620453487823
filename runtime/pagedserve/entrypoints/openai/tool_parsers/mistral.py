"""Mistral formats, both after the ``[TOOL_CALLS]`` special token (the detokenizer keeps special
tokens for these requests):

- a JSON list (tokenizer versions before v11): ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``;
- name and arguments (v11 and later): ``[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}``, one
  ``[TOOL_CALLS]`` per call, optionally with ``[CALL_ID]abc123XYZ`` before ``[ARGS]``.
"""
from __future__ import annotations

import json
import re

from pagedserve.entrypoints.openai.tool_parsers.base import (ToolCall, ToolParser, call_from_obj, json_values,
                                                          split_calls)

_NAMED = re.compile(r"\[TOOL_CALLS\]\s*([A-Za-z0-9_.\-]+)\s*(?:\[CALL_ID\]\s*([A-Za-z0-9]+)\s*)?\[ARGS\]\s*")


def _named_calls(text: str, start: int) -> list[ToolCall]:
    """The complete ``name[ARGS]{...}`` calls from ``start``."""
    dec, calls = json.JSONDecoder(), []
    for m in _NAMED.finditer(text, start):
        try:
            args, _ = dec.raw_decode(text, m.end())
        except ValueError:
            break  # arguments still arriving (or not JSON)
        call = ToolCall(m.group(1), json.dumps(args, ensure_ascii=False))
        if m.group(2):
            call.id = m.group(2)
        calls.append(call)
    return calls


class MistralToolParser(ToolParser):
    start_marker = "[TOOL_CALLS]"
    keeps_special_tokens = True

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        start = text.find(self.start_marker)
        if start < 0:
            return text, []
        if _NAMED.match(text, start):
            return split_calls(text, start, _named_calls(text, start))
        calls: list[ToolCall] = []
        for value, _, _ in json_values(text[start + len(self.start_marker):]):
            for obj in value if isinstance(value, list) else [value]:
                call = call_from_obj(obj)
                if call is not None:
                    calls.append(call)
        return split_calls(text, start, calls)

    def stream_calls(self, text: str) -> list[ToolCall]:
        start = text.find(self.start_marker)
        if start >= 0 and _NAMED.match(text, start):
            return _named_calls(text, start)
        return super().stream_calls(text)
