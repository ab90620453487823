"""Hermes / Qwen format: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call."""
from __future__ import annotations

import json
import re

from pagedserve.entrypoints.openai.tool_parsers.base import ToolCall, ToolParser, call_from_obj, split_calls

_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


class HermesToolParser(ToolParser):
    start_marker = "<tool_call>"

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        start = text.find(self.start_marker)
        if start < 0:
            return text, []
        calls = []
        for m in _BLOCK.finditer(text, start):
            try:
                call = call_from_obj(json.loads(m.group(1)))
            except ValueError:
                call = None
            if call is not None:
                calls.append(call)
        return split_calls(text, start, calls)
