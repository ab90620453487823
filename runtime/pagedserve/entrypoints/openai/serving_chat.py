"""``POST /v1/chat/completions``: messages through the model's chat template, streaming or not."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from pagedserve.entrypoints.chat_utils import content_text, image_parts, validate_messages
from pagedserve.entrypoints.media import MediaOptions, load_image
from pagedserve.multimodal.inputs import MultiModalFeature
from pagedserve.entrypoints.openai.errors import bad_request
from pagedserve.entrypoints.openai.protocol import CHAT_FIELDS, CHAT_REQUIRED, require_supported
from pagedserve.entrypoints.openai.serving_common import (DONE, ENGINE_ERRORS, ChunkTemplate, ServedModel, ServedModels,
                                                          ServerOptions, abort_unfinished, admit,
                                                          build_sampling_params, chat_logprobs, check_context,
                                                          check_priority, collect_final, encode_text, engine_failure,
                                                          first_and_rest, json_response, make_request_id, sse,
                                                          start_sse, usage, check_constraints, check_num_sequences,
                                                          prompt_logprobs_json, select_best_of, truncate_prompt)
from pagedserve.entrypoints.openai.structured import check_structured_outputs
from pagedserve.entrypoints.chat_utils import template_messages
from pagedserve.entrypoints.openai.tools import ToolPlan, ToolStream, extract_calls, plan_tools
from pagedserve.entrypoints.openai.validation import validate_body

# apply_chat_template arguments a request's chat_template_kwargs may not override
_RESERVED_KWARGS = {"conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
                    "continue_final_message", "tokenize", "padding", "truncation", "max_length",
                    "return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs"}


async def render_messages(model: ServedModel, body: dict, opts: ServerOptions
                          ) -> tuple[list[int], list[dict], list[MultiModalFeature]]:
    """Messages → prompt token ids (roles and content validated), and the images of ``image_url``
    parts (a vision-language model: their placeholders expanded by the model's processor)."""
    mm = model.engine.processor.mm
    try:
        msgs = validate_messages(body["messages"], allow_images=mm is not None)
    except ValueError as e:
        raise _messages_error(e) from None
    template = body.get("chat_template")
    if template is not None and not opts.trust_request_chat_template:
        raise bad_request("chat_template in a request needs the server flag --trust-request-chat-template",
                          param="chat_template")
    tok = model.engine.tokenizer
    template = template or model.chat_template or (mm.chat_template if mm is not None else None)
    if template is None and not getattr(tok, "chat_template", None):
        raise bad_request("this model has no chat template; use /v1/completions or start the server with "
                          "--chat-template", param="messages")
    add_gen = body.get("add_generation_prompt")
    add_gen = True if add_gen is None else add_gen
    cont = bool(body.get("continue_final_message"))
    if add_gen and cont:
        raise bad_request("add_generation_prompt and continue_final_message cannot both be true",
                          param="continue_final_message")
    if cont and msgs[-1]["role"] != "assistant":
        raise bad_request("continue_final_message needs the last message to be an assistant message",
                          param="continue_final_message")
    limit = model.engine.max_model_len * model.max_token_chars
    if sum(len(content_text(m["content"])) for m in msgs) > limit:
        raise bad_request(f"messages are far longer than this model's maximum context length "
                          f"({model.engine.max_model_len} tokens)", param="messages", code="context_length_exceeded")
    extra = {k: v for k, v in (body.get("chat_template_kwargs") or {}).items() if k not in _RESERVED_KWARGS}
    try:
        tools = body.get("tools") or None
        if tools is not None:
            extra["tools"] = tools  # the template's own tool rendering (vLLM passes them the same way)
        text = tok.apply_chat_template(template_messages(msgs), add_generation_prompt=add_gen,
                                       continue_final_message=cont, tokenize=False, chat_template=template, **extra)
    except Exception as e:  # jinja errors, template-raised exceptions
        raise bad_request(f"the chat template failed on these messages: {type(e).__name__}: {e}",
                          param="messages") from None
    if not isinstance(text, str):
        raise bad_request("the chat template did not render to text", param="messages")
    add_special = bool(body.get("add_special_tokens"))
    parts = image_parts(msgs)
    if not parts:
        return encode_text(model, text, add_special, "messages"), msgs, []
    try:  # images: decoded (or fetched) and preprocessed off the event loop
        ids, feats = await asyncio.to_thread(_process_images, mm, text, parts, add_special, opts.media)
    except ValueError as e:
        raise _messages_error(e) from None
    return ids, msgs, feats


def _process_images(mm, text: str, parts: list[dict], add_special: bool, media: MediaOptions
                    ) -> tuple[list[int], list[MultiModalFeature]]:
    images = [load_image(p["url"], media, f"{p['where']}.image_url.url") for p in parts]
    try:
        mm.images({"image": images})  # the per-prompt limit, named for the messages
    except ValueError as e:
        raise ValueError(f"messages: {len(images)} image_url parts exceed the limit of {mm.limits.get('image', 0)} "
                         f"per prompt (--limit-mm-per-prompt)") from e
    return mm.process(text, {"image": images}, add_special_tokens=add_special)


def _messages_error(e: ValueError):
    msg = str(e)
    param = msg.split(" ", 1)[0].rstrip(":") if msg.startswith("messages") else "messages"
    return bad_request(msg, param=param)


async def create_chat_completion(request: web.Request, body: dict, served: ServedModels) -> web.StreamResponse:
    validate_body(body, CHAT_FIELDS, CHAT_REQUIRED)
    require_supported(body)
    model = served.resolve(body.get("model"))
    stream = bool(body.get("stream"))
    opts = served.options
    params, max_field = build_sampling_params(body, model, chat=True, stream=stream, opts=opts)
    plan = plan_tools(body, opts.enable_auto_tool_choice, opts.tool_call_parser)
    if plan.spec is not None:  # tool_choice "required" / a named function: structured output
        if params.structured_outputs is not None:
            raise bad_request(f"tool_choice {body.get('tool_choice')!r} cannot be combined with response_format / "
                              "structured_outputs (both constrain the output)", param="tool_choice")
        params = params.clone(structured_outputs=plan.spec)
        await check_structured_outputs(plan.spec, "tools")
    else:
        await check_constraints(body, params)
    if plan.parser is not None and plan.parser.keeps_special_tokens:
        params = params.clone(skip_special_tokens=False)
    priority = check_priority(model, body)
    ids, msgs, mm = await render_messages(model, body, opts)
    if mm and params.truncate_prompt_tokens is not None:
        raise bad_request("truncate_prompt_tokens cannot cut a prompt with images", param="truncate_prompt_tokens")
    ids = truncate_prompt(ids, params)
    check_context(model, len(ids), params, max_field, "messages")
    check_num_sequences(1, params, opts)
    request_id, engine_id = make_request_id("chatcmpl", request)
    echo = content_text(msgs[-1]["content"]) if body.get("echo") and msgs[-1]["role"] == "assistant" else ""
    user_n, user_lp = body.get("n") or 1, params.logprobs if body.get("logprobs") else None
    streams = []
    try:
        prompt = {"prompt_token_ids": ids, "mm_features": mm} if mm else {"prompt_token_ids": ids}
        streams.append(admit(model, engine_id, prompt, params, priority, time.time()))
        if stream:
            return await _stream(request, body, model, streams[0], params, request_id, len(ids), echo, plan)
        try:
            final = await collect_final(streams[0])
        except ENGINE_ERRORS as e:
            raise engine_failure(e) from None
        if params.n > user_n:  # best_of > n
            final = select_best_of(final, user_n, user_lp is not None)
        k = user_lp
        choices, comp = [], 0
        for c in final.outputs:
            comp += len(c.token_ids)
            message, reason = _message(plan, echo + c.text, c.finish_reason)
            choices.append({"index": c.index, "message": message,
                            "logprobs": chat_logprobs(model, c.token_ids, c.logprobs, k) if k is not None else None,
                            "finish_reason": reason, "stop_reason": c.stop_reason})
        resp = {"id": request_id, "object": "chat.completion", "created": int(time.time()),
                "model": model.name, "choices": choices, "usage": usage(len(ids), comp, final.num_cached_tokens)}
        if body.get("prompt_logprobs") is not None:
            resp["prompt_logprobs"] = prompt_logprobs_json(final.prompt_logprobs)
        return json_response(resp, request_id)
    finally:
        abort_unfinished(model, streams)


def _message(plan: ToolPlan, text: str, finish: str | None) -> tuple[dict, str | None]:
    """The assistant message (content and tool calls) and the finish reason."""
    if not plan.active:
        return {"role": "assistant", "content": text}, finish
    content, calls = extract_calls(plan, text)
    if not calls:
        return {"role": "assistant", "content": content}, finish
    reason = finish if finish != "stop" or plan.mode == "named" else "tool_calls"
    return {"role": "assistant", "content": content, "tool_calls": [c.to_json() for c in calls]}, reason


async def _stream(request: web.Request, body: dict, model: ServedModel, stream: Any, params: Any,
                  request_id: str, prompt_tokens: int, echo: str, plan: ToolPlan) -> web.StreamResponse:
    _, outputs = await first_and_rest(stream.__aiter__())
    resp = await start_sse(request, request_id)
    created, name, n = int(time.time()), model.name, params.n
    k = params.logprobs if body.get("logprobs") else None
    opts = body.get("stream_options") or {}
    include_usage, continuous = bool(opts.get("include_usage")), bool(opts.get("continuous_usage_stats"))
    done, comp = [False] * n, [0] * n
    cached = 0
    tool_streams = [ToolStream(plan) for _ in range(n)] if plan.active else None

    def chunk(idx: int, delta: dict, lp: Any = None, reason: str | None = None, stop_reason: Any = None) -> bytes:
        if lp is None and reason is None and not continuous and list(delta) == ["content"]:
            return fast.content(idx, delta["content"])  # the common chunk, from pre-encoded pieces
        choice: dict[str, Any] = {"index": idx, "delta": delta, "logprobs": lp, "finish_reason": reason}
        if reason is not None:
            choice["stop_reason"] = stop_reason
        c: dict[str, Any] = {"id": request_id, "object": "chat.completion.chunk", "created": created,
                             "model": name, "choices": [choice]}
        if include_usage:
            c["usage"] = usage(prompt_tokens, sum(comp)) if continuous else None
        return sse(c)

    started = [False] * n
    fast = ChunkTemplate(request_id, "chat.completion.chunk", created, name, include_usage)
    try:
        async for out in outputs:
            cached = out.num_cached_tokens
            for c in out.outputs:
                idx = c.index
                if done[idx]:
                    continue
                if not started[idx]:  # the role chunk goes out with the first token, so TTFT stays honest
                    started[idx] = True
                    first: dict[str, Any] = {"role": "assistant", "content": ""}
                    if body.get("prompt_logprobs") is not None and idx == 0:
                        first_chunk = json.loads(chunk(idx, first)[len(b"data: "):])
                        first_chunk["prompt_logprobs"] = prompt_logprobs_json(out.prompt_logprobs)
                        await resp.write(sse(first_chunk))
                    else:
                        await resp.write(chunk(idx, first))
                    if echo:
                        await resp.write(chunk(idx, {"content": echo}))
                comp[idx] += len(c.token_ids)
                lp = chat_logprobs(model, c.token_ids, c.logprobs, k) if k is not None and c.token_ids else None
                if tool_streams is not None:
                    ts = tool_streams[idx]
                    for delta in ts.feed(c.text):
                        await resp.write(chunk(idx, delta))
                    if c.finish_reason is not None:
                        for delta in ts.finish():
                            await resp.write(chunk(idx, delta))
                elif c.text or lp:
                    await resp.write(chunk(idx, {"content": c.text}, lp))
                if c.finish_reason is not None:
                    done[idx] = True
                    reason = c.finish_reason
                    if tool_streams is not None and tool_streams[idx].num_calls and reason == "stop" \
                            and plan.mode != "named":
                        reason = "tool_calls"
                    await resp.write(chunk(idx, {}, None, reason, c.stop_reason))
        if include_usage:
            await resp.write(sse({"id": request_id, "object": "chat.completion.chunk", "created": created,
                                  "model": name, "choices": [], "usage": usage(prompt_tokens, sum(comp), cached)}))
    except ENGINE_ERRORS as e:
        await resp.write(sse(engine_failure(e).body()))
    await resp.write(DONE)
    await resp.write_eof()
    return resp
