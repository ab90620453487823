"""``tools`` / ``tool_choice`` → how a chat request runs: ``none`` (plain text), ``auto`` (the
``--tool-call-parser`` finds calls in the text; needs ``--enable-auto-tool-choice``), ``required``
(a JSON array of calls, enforced by structured output) or a named function (its arguments,
enforced by structured output against the function's ``parameters`` schema). As vLLM does."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pagedserve.entrypoints.openai.errors import bad_request
from pagedserve.entrypoints.openai.tool_parsers import ToolCall, ToolParser, get_tool_parser
from pagedserve.entrypoints.openai.tool_parsers.base import top_objects
from pagedserve.sampling_params import StructuredOutputsParams

_ANY_OBJECT = {"type": "object"}


@dataclass
class ToolPlan:
    mode: str  # "none" | "auto" | "required" | "named"
    tools: list[dict] = field(default_factory=list)
    name: str | None = None  # the named function
    parser: ToolParser | None = None  # auto
    parallel: bool = True
    spec: StructuredOutputsParams | None = None  # required / named

    @property
    def active(self) -> bool:
        return self.mode != "none"


def _params_schema(tool: dict) -> dict:
    p = tool["function"].get("parameters")
    return p if isinstance(p, dict) and p else _ANY_OBJECT


def plan_tools(body: dict, enable_auto: bool, parser_name: str | None) -> ToolPlan:
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls") is not False
    if not tools:
        if choice not in (None, "none"):
            raise bad_request("tool_choice needs tools", param="tool_choice")
        return ToolPlan("none")
    names = [t["function"]["name"] for t in tools]
    if choice is None:
        choice = "auto" if enable_auto else "none"  # vLLM: tools without auto tool choice are only rendered
    if isinstance(choice, dict):
        fn = choice.get("function") if choice.get("type") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise bad_request("tool_choice must be 'none', 'auto', 'required' or "
                              "{'type': 'function', 'function': {'name': ...}}", param="tool_choice")
        if name not in names:
            raise bad_request(f"tool_choice names function {name!r}, which is not in tools ({', '.join(names)})",
                              param="tool_choice.function.name")
        tool = tools[names.index(name)]
        return ToolPlan("named", tools, name=name, parallel=parallel,
                        spec=StructuredOutputsParams(json=_params_schema(tool)))
    if choice == "none":
        return ToolPlan("none", tools)
    if choice == "required":
        calls = {"type": "array", "minItems": 1, "items": {"anyOf": [
            {"type": "object", "properties": {"name": {"type": "string", "enum": [t["function"]["name"]]},
                                              "parameters": _params_schema(t)},
             "required": ["name", "parameters"]} for t in tools]}}
        if not parallel:
            calls["maxItems"] = 1
        return ToolPlan("required", tools, parallel=parallel, spec=StructuredOutputsParams(json=calls))
    if not enable_auto or not parser_name:
        raise bad_request('"auto" tool choice needs the server to run with --enable-auto-tool-choice and '
                          "--tool-call-parser", param="tool_choice")
    return ToolPlan("auto", tools, parser=get_tool_parser(parser_name), parallel=parallel)


def extract_calls(plan: ToolPlan, text: str) -> tuple[str | None, list[ToolCall]]:
    """The finished text → (content, tool calls) under ``plan``."""
    if plan.mode == "named":
        return None, [ToolCall(plan.name or "", text)]
    if plan.mode == "required":
        try:
            items = json.loads(text)
        except ValueError:
            return text, []  # cut off by max_tokens: not a complete array
        calls = [ToolCall(it["name"], json.dumps(it.get("parameters", {}), ensure_ascii=False))
                 for it in items if isinstance(it, dict) and isinstance(it.get("name"), str)]
        return None, calls if plan.parallel else calls[:1]
    if plan.mode == "auto" and plan.parser is not None:
        content, calls = plan.parser.extract(text)
        return content, calls if plan.parallel else calls[:1]
    return text, []


def _required_calls(text: str) -> list[ToolCall]:
    """The complete ``{"name", "parameters"}`` items of a ``required`` array still being generated."""
    calls = []
    for s, e in top_objects(text):
        try:
            item = json.loads(text[s:e])
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            calls.append(ToolCall(item["name"], json.dumps(item.get("parameters", {}), ensure_ascii=False)))
    return calls


class ToolStream:
    """One streamed choice under a tool plan: turns text deltas into OpenAI chat deltas. A named
    function streams its arguments as they come; ``required`` and ``auto`` send plain text until a
    call begins, then each call (a name delta, then an arguments delta) as soon as its JSON closes."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.text = ""
        self.sent = 0  # characters of text sent as content
        self.calls: list[ToolCall] = []  # calls sent
        self.named_id: str | None = None
        self.in_call = False

    @property
    def num_calls(self) -> int:
        return 1 if self.named_id is not None else len(self.calls)

    def feed(self, delta: str) -> list[dict]:
        if not delta:
            return []
        self.text += delta
        plan = self.plan
        if plan.mode == "named":
            out = []
            if self.named_id is None:
                call = ToolCall(plan.name or "", "")
                self.named_id = call.id
                out.append({"tool_calls": [{"index": 0, "id": call.id, "type": "function",
                                            "function": {"name": call.name, "arguments": ""}}]})
            out.append({"tool_calls": [{"index": 0, "function": {"arguments": delta}}]})
            return out
        if plan.mode == "required":
            return self._send_calls(_required_calls(self.text))
        if plan.mode != "auto" or plan.parser is None:
            return []
        if self.in_call:
            return self._send_calls(plan.parser.stream_calls(self.text))
        start = plan.parser.call_started(self.text)
        if start >= 0:
            self.in_call = True
            return self._content(start) + self._send_calls(plan.parser.stream_calls(self.text))
        return self._content(len(self.text) - plan.parser.held(self.text))

    def _send_calls(self, calls: list[ToolCall]) -> list[dict]:
        """Deltas for the calls past those already sent (one call at most without parallel_tool_calls)."""
        if not self.plan.parallel:
            calls = calls[:1]
        out = []
        for c in calls[len(self.calls):]:
            i = len(self.calls)
            self.calls.append(c)
            out.append({"tool_calls": [{"index": i, "id": c.id, "type": "function",
                                        "function": {"name": c.name, "arguments": ""}}]})
            out.append({"tool_calls": [{"index": i, "function": {"arguments": c.arguments}}]})
        return out

    def _content(self, end: int) -> list[dict]:
        if end <= self.sent:
            return []
        piece, self.sent = self.text[self.sent:end], end
        return [{"content": piece}]

    def finish(self) -> list[dict]:
        """Deltas still owed when the choice ends (calls not sent yet, held-back text)."""
        plan = self.plan
        if plan.mode == "named":
            return []
        content, calls = extract_calls(plan, self.text)
        if not calls and not self.calls:
            return self._content(len(self.text)) if plan.mode in ("auto", "required") else []
        out = []
        if content and plan.mode == "auto":
            idx = self.text.find(content, self.sent) if self.sent < len(content) else -1
            if idx >= 0:
                out += self._content(idx + len(content))
        return out + self._send_calls(calls)
