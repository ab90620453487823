"""Chat messages → prompt token ids through the tokenizer's chat template (roles validated)."""
from __future__ import annotations

from typing import Any

VALID_ROLES = ("system", "user", "assistant", "tool", "developer")


def validate_messages(messages: Any) -> list[dict[str, Any]]:
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
        if isinstance(content, list):  # OpenAI content parts: only text parts are supported
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(f"messages[{i}].content[{j}] must be a text part "
                                     "({'type': 'text', 'text': ...}); other content types are not supported")
                texts.append(part["text"])
            content = "".join(texts)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string or a list of text parts")
        out.append({**m, "role": role, "content": content})
    return out


def render_chat(tokenizer: Any, messages: Any, add_generation_prompt: bool = True,
                chat_template: str | None = None) -> list[int]:
    if tokenizer is None:
        raise ValueError("chat needs a tokenizer")
    msgs = validate_messages(messages)
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError("the model's tokenizer has no chat template; pass chat_template")
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, tokenize=False,
                                         chat_template=chat_template)
    return tokenizer.encode(text, add_special_tokens=False)
