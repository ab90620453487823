"""The pre-encoded streaming chunk (``ChunkTemplate``) is byte for byte the chunk built as a dict."""
from __future__ import annotations

import pytest

from pagedserve.entrypoints.openai.serving_common import ChunkTemplate, sse


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("text", ["", "Paris", 'quote " and \\ backslash\n', "日本語 ✓", "\ud800"])
def test_template_equals_the_dict_chunk(include_usage, text):
    t = ChunkTemplate("cmpl-1", "text_completion", 1700000000, "m", include_usage)
    head = {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "m"}
    usage = {"usage": None} if include_usage else {}
    want = sse({**head, "choices": [{"index": 3, "text": text, "logprobs": None, "finish_reason": None,
                                      "stop_reason": None}], **usage})
    assert t.text(3, text) == want
    c = ChunkTemplate("chatcmpl-1", "chat.completion.chunk", 1700000000, "m", include_usage)
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "m"}
    want = sse({**head, "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None,
                                      "finish_reason": None}], **usage})
    assert c.content(0, text) == want
