"""``POST /tokenize`` and ``POST /detokenize`` (vLLM's shapes)."""
from __future__ import annotations

from aiohttp import web

from pagedserve.entrypoints.openai.errors import bad_request
from pagedserve.entrypoints.openai.protocol import DETOKENIZE_FIELDS, TOKENIZE_FIELDS
from pagedserve.entrypoints.openai.serving_chat import render_messages
from pagedserve.entrypoints.openai.serving_common import ServedModels, check_token_ids, encode_text, json_response
from pagedserve.entrypoints.openai.validation import validate_body


async def tokenize(request: web.Request, body: dict, served: ServedModels) -> web.Response:
    validate_body(body, TOKENIZE_FIELDS)
    model = served.resolve(body.get("model"))
    has_prompt, has_msgs = body.get("prompt") is not None, body.get("messages") is not None
    if has_prompt == has_msgs:
        raise bad_request("give exactly one of prompt or messages", param="prompt" if has_prompt else "messages")
    if has_prompt:
        add = body.get("add_special_tokens")
        ids = encode_text(model, body["prompt"], True if add is None else add, "prompt")
    else:
        ids, _, _ = await render_messages(model, body, served.options)
    out = {"count": len(ids), "max_model_len": model.engine.max_model_len, "tokens": ids}
    if body.get("return_token_strs"):
        out["token_strs"] = model.engine.tokenizer.convert_ids_to_tokens(ids)
    return json_response(out, "")


async def detokenize(request: web.Request, body: dict, served: ServedModels) -> web.Response:
    validate_body(body, DETOKENIZE_FIELDS, ("tokens",))
    model = served.resolve(body.get("model"))
    check_token_ids(model, body["tokens"], "tokens")
    return json_response({"prompt": model.engine.tokenizer.decode(body["tokens"])}, "")
