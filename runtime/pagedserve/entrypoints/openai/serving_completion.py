"""``POST /v1/completions``: text or token-id prompts (one or many), streaming or not."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from pagedserve.entrypoints.openai.errors import bad_request
from pagedserve.entrypoints.openai.protocol import COMPLETION_FIELDS, COMPLETION_REQUIRED, require_supported
from pagedserve.entrypoints.openai.serving_common import (DONE, ENGINE_ERRORS, ChunkTemplate, ServedModel, ServedModels,
                                                          abort_unfinished, admit, build_sampling_params, check_context,
                                                          check_constraints, check_num_sequences, check_queue,
                                                          prompt_logprobs_json, select_best_of, truncate_prompt,
                                                          check_priority, check_token_ids, collect_final,
                                                          completion_logprobs, encode_text, engine_failure,
                                                          first_and_rest, json_response, make_request_id,
                                                          merge_streams, sse, start_sse, usage)
from pagedserve.entrypoints.openai.validation import validate_body
from pagedserve.outputs import RequestOutput


def _prompts(model: ServedModel, prompt: Any, add_special: bool) -> list[tuple[str | None, list[int], str]]:
    """→ [(text or None, token ids, param name)]"""
    if isinstance(prompt, str):
        return [(prompt, encode_text(model, prompt, add_special, "prompt"), "prompt")]
    if isinstance(prompt[0], str):
        return [(p, encode_text(model, p, add_special, f"prompt[{i}]"), f"prompt[{i}]") for i, p in enumerate(prompt)]
    if isinstance(prompt[0], int):
        return [(None, list(prompt), "prompt")]
    return [(None, list(p), f"prompt[{i}]") for i, p in enumerate(prompt)]


async def create_completion(request: web.Request, body: dict, served: ServedModels) -> web.StreamResponse:
    if body.get("prompt") == [] or body.get("prompt") == "":
        raise bad_request("prompt is empty: give a string, a list of strings, a list of token ids or a list of "
                          "token-id lists, with at least one token", param="prompt")
    validate_body(body, COMPLETION_FIELDS, COMPLETION_REQUIRED)
    require_supported(body)
    model = served.resolve(body.get("model"))
    stream = bool(body.get("stream"))
    params, max_field = build_sampling_params(body, model, chat=False, stream=stream, opts=served.options)
    priority = check_priority(model, body)
    add_special = body.get("add_special_tokens")
    prompts = _prompts(model, body["prompt"], True if add_special is None else add_special)
    if params.truncate_prompt_tokens is not None:  # keep the last k tokens (echo then decodes them)
        prompts = [(t if len(ids) <= params.truncate_prompt_tokens else None, truncate_prompt(ids, params), p)
                   for t, ids, p in prompts]
    for text, ids, param in prompts:
        if text is None:
            check_token_ids(model, ids, param)
        check_context(model, len(ids), params, max_field, param)
    check_num_sequences(len(prompts), params, served.options)
    await check_constraints(body, params)
    user_n, user_lp = body.get("n") or 1, body.get("logprobs")
    request_id, engine_id = make_request_id("cmpl", request)
    arrival = time.time()
    streams = []
    if len(prompts) > 1:
        check_queue(model)  # several prompts count once against --max-waiting-requests
    try:
        for i, (text, ids, _) in enumerate(prompts):
            rid = engine_id if len(prompts) == 1 else f"{engine_id}-{i}"
            streams.append(admit(model, rid, {"prompt": text, "prompt_token_ids": ids}, params, priority, arrival,
                                 check_queue=len(prompts) == 1))
        if stream:
            return await _stream(request, body, model, prompts, streams, params, request_id)
        try:
            if len(streams) == 1:
                finals = [await collect_final(streams[0])]
            else:
                finals = list(await asyncio.gather(*(collect_final(s) for s in streams)))
        except ENGINE_ERRORS as e:
            raise engine_failure(e) from None
        if params.n > user_n:  # best_of > n
            finals = [select_best_of(f, user_n, user_lp is not None) for f in finals]
            params = params.clone(n=user_n, best_of=user_n, logprobs=user_lp)
        return json_response(_response(body, model, prompts, finals, params, request_id), request_id)
    finally:
        abort_unfinished(model, streams)


def _echo_text(model: ServedModel, text: str | None, ids: list[int]) -> str:
    return text if text is not None else model.engine.tokenizer.decode(ids)


def _response(body: dict, model: ServedModel, prompts: list, finals: list[RequestOutput], params: Any,
              request_id: str) -> dict:
    echo, n, k = bool(body.get("echo")), params.n, params.logprobs
    choices, completion_tokens, cached = [], 0, 0
    for i, out in enumerate(finals):
        text, ids, _ = prompts[i]
        cached += out.num_cached_tokens
        prefix = _echo_text(model, text, ids) if echo else ""
        for c in out.outputs:
            completion_tokens += len(c.token_ids)
            lp = None
            if k is not None:
                if echo and out.prompt_logprobs is not None:
                    lp = completion_logprobs(model, ids + list(c.token_ids),
                                             list(out.prompt_logprobs) + list(c.logprobs or []), k)
                else:
                    lp = completion_logprobs(model, c.token_ids, c.logprobs or [], k, len(prefix))
            choice = {"index": i * n + c.index, "text": prefix + c.text, "logprobs": lp,
                      "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
            if params.prompt_logprobs is not None and body.get("prompt_logprobs") is not None:
                choice["prompt_logprobs"] = prompt_logprobs_json(out.prompt_logprobs)
            choices.append(choice)
    choices.sort(key=lambda c: c["index"])
    return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model.name,
            "choices": choices,
            "usage": usage(sum(len(p[1]) for p in prompts), completion_tokens, cached)}


async def _stream(request: web.Request, body: dict, model: ServedModel, prompts: list, streams: list,
                  params: Any, request_id: str) -> web.StreamResponse:
    _, outputs = await first_and_rest(merge_streams(streams).__aiter__())
    resp = await start_sse(request, request_id)
    created, name, n, k = int(time.time()), model.name, params.n, params.logprobs
    echo = bool(body.get("echo"))
    opts = body.get("stream_options") or {}
    include_usage, continuous = bool(opts.get("include_usage")), bool(opts.get("continuous_usage_stats"))
    num_choices = len(prompts) * n
    sent_first, done = [False] * num_choices, [False] * num_choices
    offsets, comp_tokens = [0] * num_choices, [0] * num_choices
    prompt_tokens = sum(len(p[1]) for p in prompts)
    cached = 0

    fast = ChunkTemplate(request_id, "text_completion", created, name, include_usage)

    def chunk(idx: int, text: str, lp: Any, reason: str | None, stop_reason: Any) -> bytes:
        if lp is None and reason is None and not continuous:
            return fast.text(idx, text)
        c: dict[str, Any] = {"id": request_id, "object": "text_completion", "created": created, "model": name,
                             "choices": [{"index": idx, "text": text, "logprobs": lp, "finish_reason": reason,
                                          "stop_reason": stop_reason}]}
        if include_usage:
            c["usage"] = usage(prompt_tokens, sum(comp_tokens)) if continuous else None
        return sse(c)

    try:
        async for i, out in outputs:
            text_p, ids_p, _ = prompts[i]
            cached = max(cached, out.num_cached_tokens)
            for c in out.outputs:
                idx = i * n + c.index
                if done[idx]:
                    continue
                text, lp = c.text, None
                toks, lps = list(c.token_ids), list(c.logprobs or []) if c.logprobs is not None else None
                if not sent_first[idx]:
                    sent_first[idx] = True
                    if body.get("prompt_logprobs") is not None:  # vLLM: on the choice's first chunk
                        first = {"id": request_id, "object": "text_completion", "created": created, "model": name,
                                 "choices": [{"index": idx, "text": "", "logprobs": None, "finish_reason": None,
                                              "stop_reason": None,
                                              "prompt_logprobs": prompt_logprobs_json(out.prompt_logprobs)}]}
                        if include_usage:
                            first["usage"] = None
                        await resp.write(sse(first))
                    if echo:
                        text = _echo_text(model, text_p, ids_p) + text
                        if k is not None and out.prompt_logprobs is not None:
                            toks = ids_p + toks
                            lps = list(out.prompt_logprobs) + (lps or [])
                comp_tokens[idx] += len(c.token_ids)
                if k is not None and toks:
                    lp = completion_logprobs(model, toks, lps or [], k, offsets[idx])
                offsets[idx] += len(text)
                if text or lp:
                    await resp.write(chunk(idx, text, lp, None, None))
                if c.finish_reason is not None:
                    done[idx] = True
                    await resp.write(chunk(idx, "", None, c.finish_reason, c.stop_reason))
        if include_usage:
            await resp.write(sse({"id": request_id, "object": "text_completion", "created": created, "model": name,
                                  "choices": [], "usage": usage(prompt_tokens, sum(comp_tokens), cached)}))
    except ENGINE_ERRORS as e:
        await resp.write(sse(engine_failure(e).body()))
    await resp.write(DONE)
    await resp.write_eof()
    return resp
