"""Prefix hashing without a tokenizer: the request's leading text in fixed-size character chunks.

A request becomes one canonical text (chat: each message as ``role``, ``\\x1f``, content, ``\\x1e``;
completions: the prompt), cut into ``chunk_chars``-character chunks; chunk *i*'s hash chains the
hash of chunk *i-1* (as vLLM chains its KV block hashes), so equal hashes mean equal prefixes. The
final partial chunk is hashed too, so a short prompt still has one hash.

The *affinity key* is what consistent hashing places on the ring: for chat, the messages up to and
including the first user message (the same for every turn of a conversation, whatever its length);
for completions, the first chunk.
"""
from __future__ import annotations

import hashlib
from typing import Any

DEFAULT_CHUNK_CHARS = 128
DEFAULT_MAX_CHUNKS = 64  # hash at most this many leading chunks (8 KiB of text by default)


def _h(prev: bytes, data: str) -> bytes:
    return hashlib.blake2b(prev + data.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text parts, mark the others
        return "".join(p.get("text", "") if isinstance(p, dict) and p.get("type") == "text" else "\x00"
                       for p in content)
    return "" if content is None else str(content)


def _message_text(m: Any) -> str:
    if not isinstance(m, dict):
        return "\x1e"
    return f"{m.get('role', '')}\x1f{_content_text(m.get('content'))}\x1e"


def canonical_text(body: dict, max_chars: int) -> str:
    """The request's leading text (at most ``max_chars``): chat messages or the completion prompt."""
    msgs = body.get("messages")
    if isinstance(msgs, list):
        out, n = [], 0
        for m in msgs:
            t = _message_text(m)
            out.append(t)
            n += len(t)
            if n >= max_chars:
                break
        return "".join(out)[:max_chars]
    prompt = body.get("prompt")
    if isinstance(prompt, list):  # a batch of prompts or token ids: the first one decides
        prompt = prompt[0] if prompt else ""
    if isinstance(prompt, list):  # token ids
        prompt = ",".join(map(str, prompt))
    return (prompt if isinstance(prompt, str) else "")[:max_chars]


def chunk_hashes(text: str, chunk_chars: int = DEFAULT_CHUNK_CHARS) -> list[bytes]:
    """Chained hashes of ``text``'s consecutive chunks (the last may be partial)."""
    out: list[bytes] = []
    prev = b""
    for i in range(0, len(text), chunk_chars):
        prev = _h(prev, text[i:i + chunk_chars])
        out.append(prev)
    return out


def _anchor(body: dict, chunk_chars: int) -> tuple[bytes, int]:
    """(affinity key, length of the text it covers)."""
    msgs = body.get("messages")
    if isinstance(msgs, list) and msgs:
        anchor = []
        for m in msgs:
            anchor.append(_message_text(m))
            if isinstance(m, dict) and m.get("role") == "user":
                break
        text = "".join(anchor)[: chunk_chars * DEFAULT_MAX_CHUNKS]
        return _h(b"chat", text), len(text)
    text = canonical_text(body, chunk_chars)
    return _h(b"text", text), chunk_chars


def affinity_key(body: dict, chunk_chars: int = DEFAULT_CHUNK_CHARS) -> bytes:
    """The conversation's anchor: chat messages through the first user turn, else the first chunk."""
    return _anchor(body, chunk_chars)[0]


def request_hashes(body: dict, chunk_chars: int = DEFAULT_CHUNK_CHARS,
                   max_chunks: int = DEFAULT_MAX_CHUNKS) -> tuple[bytes, list[bytes], int]:
    """(affinity key, chained chunk hashes, number of leading chunks inside the anchor) of a request."""
    key, anchor_chars = _anchor(body, chunk_chars)
    return key, chunk_hashes(canonical_text(body, chunk_chars * max_chunks), chunk_chars), anchor_chars // chunk_chars
