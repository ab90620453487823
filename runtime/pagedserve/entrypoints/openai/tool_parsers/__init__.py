"""Tool-call parsers (``--tool-call-parser``): find the function calls in a model's text output.

Each parser turns the whole output into ``(content, [ToolCall])`` and names the marker that starts
a call, so streaming can send plain text until a call begins and the call once it is complete."""
from __future__ import annotations

from pagedserve.entrypoints.openai.tool_parsers.base import ToolCall, ToolParser, new_call_id
from pagedserve.entrypoints.openai.tool_parsers.hermes import HermesToolParser
from pagedserve.entrypoints.openai.tool_parsers.llama3_json import Llama3JsonToolParser
from pagedserve.entrypoints.openai.tool_parsers.mistral import MistralToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {"hermes": HermesToolParser, "llama3_json": Llama3JsonToolParser,
                                            "mistral": MistralToolParser}

__all__ = ["TOOL_PARSERS", "ToolCall", "ToolParser", "new_call_id", "get_tool_parser"]


def get_tool_parser(name: str) -> ToolParser:
    try:
        return TOOL_PARSERS[name]()
    except KeyError:
        raise ValueError(f"unknown tool-call parser {name!r}; choose one of {', '.join(TOOL_PARSERS)}") from None
