"""Mistral format: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` (the marker is a special
token, so the detokenizer keeps special tokens for these requests)."""
from __future__ import annotations

from pagedserve.entrypoints.openai.tool_parsers.base import (ToolCall, ToolParser, call_from_obj, json_values,
                                                          split_calls)


class MistralToolParser(ToolParser):
    start_marker = "[TOOL_CALLS]"
    keeps_special_tokens = True

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        start = text.find(self.start_marker)
        if start < 0:
            return text, []
        calls: list[ToolCall] = []
        for value, _, _ in json_values(text[start + len(self.start_marker):]):
            for obj in value if isinstance(value, list) else [value]:
                call = call_from_obj(obj)
                if call is not None:
                    calls.append(call)
        return split_calls(text, start, calls)
