"""Chat messages → prompt token ids through the tokenizer's chat template (roles validated)."""
from __future__ import annotations

import json
from typing import Any

VALID_ROLES = ("system", "user", "assistant", "tool", "developer")


def validate_messages(messages: Any, allow_images: bool = False) -> list[dict[str, Any]]:
    """Roles and content checked. Text parts are joined into one string; with ``allow_images`` (a
    vision-language model) a message with ``image_url`` parts keeps a list of ``{"type": "text"}`` and
    ``{"type": "image", "url": ..., "where": "messages[i].content[j]"}`` parts, the form HF chat
    templates of such models iterate over."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in VALID_ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(VALID_ROLES)}, got {role!r}")
        content = m.get("content")
        if isinstance(content, list):
            content = _content_parts(i, content, allow_images)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, (str, list)):
            raise ValueError(f"messages[{i}].content must be a string or a list of content parts")
        out.append({**m, "role": role, "content": content})
    return out


def _content_parts(i: int, content: list, allow_images: bool) -> str | list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            if not allow_images:
                raise ValueError(f"{where}: image_url content parts need a vision-language model; this model "
                                 "is text-only")
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str) or not url:
                raise ValueError(f"{where}.image_url.url must be a non-empty string")
            parts.append({"type": "image", "url": url, "where": where})
        else:
            raise ValueError(f"{where} must be a text part ({{'type': 'text', 'text': ...}})"
                             + (" or an image_url part" if allow_images else "")
                             + f"; got type {kind!r}")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def content_text(content: str | list[dict[str, Any]]) -> str:
    """A message's text (the text parts of a multimodal message joined)."""
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def image_parts(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The image parts of validated messages, in order."""
    return [p for m in msgs if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image"]


def template_messages(msgs: list[dict]) -> list[dict]:
    """Assistant tool calls with their arguments as objects (what chat templates iterate over)."""
    out = []
    for m in msgs:
        calls = m.get("tool_calls")
        if m.get("role") == "assistant" and calls:
            fixed = []
            for c in calls:
                c = dict(c)
                fn = dict(c.get("function") or {})
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])
                    except ValueError:
                        pass
                c["function"] = fn
                fixed.append(c)
            m = {**m, "tool_calls": fixed}
        out.append(m)
    return out


def render_chat(tokenizer: Any, messages: Any, add_generation_prompt: bool = True,
                chat_template: str | None = None, tools: list[dict] | None = None,
                continue_final_message: bool = False, chat_template_kwargs: dict[str, Any] | None = None
                ) -> list[int]:
    """The offline path (``LLM.chat``): the same rendering as the server's chat endpoint."""
    if tokenizer is None:
        raise ValueError("chat needs a tokenizer")
    msgs = validate_messages(messages)
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError("the model's tokenizer has no chat template; pass chat_template")
    if add_generation_prompt and continue_final_message:
        raise ValueError("add_generation_prompt and continue_final_message cannot both be true")
    if continue_final_message and msgs[-1]["role"] != "assistant":
        raise ValueError("continue_final_message needs the last message to be an assistant message")
    extra = dict(chat_template_kwargs or {})
    if tools:
        extra["tools"] = tools
    text = tokenizer.apply_chat_template(template_messages(msgs), add_generation_prompt=add_generation_prompt,
                                         continue_final_message=continue_final_message, tokenize=False,
                                         chat_template=chat_template, **extra)
    return tokenizer.encode(text, add_special_tokens=False)
