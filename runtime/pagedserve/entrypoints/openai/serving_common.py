"""Shared pieces of the OpenAI endpoints: model routing, request → SamplingParams, prompt checks,
logprobs and usage formatting, admission of engine requests, and Server-Sent Events."""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from aiohttp import web

from pagedserve.entrypoints.media import MediaOptions
from pagedserve.engine.async_engine import (AsyncEngine, EngineDeadError, QueueFullError, RequestAbortedError,
                                            RequestRejectedError, RequestStream)

ENGINE_ERRORS = (EngineDeadError, RequestAbortedError, RequestRejectedError)
from pagedserve.entrypoints.openai.errors import APIError, bad_request, from_value_error
from pagedserve.entrypoints.openai.structured import (bad_words_token_ids, check_structured_outputs,
                                                      parse_logit_bias, structured_outputs_from)
from pagedserve.lora.request import LoRARequest
from pagedserve.outputs import Logprob, RequestOutput
from pagedserve.sampling_params import SamplingParams

logger = logging.getLogger("pagedserve.server")

_GEN_CONFIG_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
_SAFE_LOGPROB = -9999.0  # -inf is not valid JSON


@dataclass
class ServedModel:
    names: list[str]
    engine: AsyncEngine
    defaults: dict[str, Any] = field(default_factory=dict)  # sampling defaults (generation_config.json)
    chat_template: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    max_token_chars: int = 256  # longest text one token can decode to (cheap too-long guard)
    lora_request: LoRARequest | None = None  # set on an adapter's view of its base model (serving_lora.py)

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass
class ServerOptions:
    trust_request_chat_template: bool = False
    max_logprobs: int = 20
    generation_config: str = "auto"
    max_sequences_per_request: int = 1024  # prompts x n (x best_of) of one request
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    media: MediaOptions = field(default_factory=MediaOptions)  # image_url loading (entrypoints/media.py)


class ServedModels:
    """Served name → engine. A request without ``model`` goes to the first model."""

    def __init__(self, models: list[ServedModel], options: ServerOptions | None = None) -> None:
        self.models = models
        self.options = options or ServerOptions()
        self.by_name: dict[str, ServedModel] = {}
        for m in models:
            for n in m.names:
                if n in self.by_name:
                    raise ValueError(f"served model name {n!r} is used twice")
                self.by_name[n] = m
        self.adapters: dict[str, ServedModel] = {}  # LoRA adapter name → its view of the base model
        self.lora_lock: Any = None  # serializes adapter loads / unloads (serving_lora.py)

    def resolve(self, name: Any) -> ServedModel:
        if name is None:
            return self.models[0]
        m = self.by_name.get(name) or self.adapters.get(name)
        if m is None:
            raise APIError(404, f"The model `{name}` does not exist. Served models: "
                           f"{', '.join(sorted([*self.by_name, *self.adapters]))}", param="model",
                           code="model_not_found")
        return m

    @property
    def engines(self) -> list[AsyncEngine]:
        return [m.engine for m in self.models]


def generation_defaults(engine: AsyncEngine) -> dict[str, Any]:
    """Sampling defaults from the model's generation_config.json (vLLM's ``--generation-config auto``)."""
    gen = engine.model_config.generation_config or {}
    out = {k: gen[k] for k in _GEN_CONFIG_KEYS if gen.get(k) is not None}
    if gen.get("do_sample") is False:
        out["temperature"] = 0.0
    return out


_engine_ids = itertools.count()


def make_request_id(prefix: str, request: web.Request) -> tuple[str, str]:
    """(the id the client sees, a unique id for the engine). A client's ``X-Request-Id`` (up to
    128 printable characters) is echoed back; the engine id stays unique even if clients reuse it."""
    given = request.headers.get("X-Request-Id", "")
    public = given if 0 < len(given) <= 128 and given.isprintable() else f"{prefix}-{uuid.uuid4().hex}"
    return public, f"{public}#{next(_engine_ids)}"


# -- request → SamplingParams ---------------------------------------------------------------------
def build_sampling_params(body: dict, model: ServedModel, *, chat: bool, stream: bool,
                          opts: ServerOptions) -> tuple[SamplingParams, str]:
    """Return the params and the name of the request field that set max_tokens."""
    max_field = "max_tokens"
    max_tokens = body.get("max_tokens")
    if chat:
        if body.get("max_completion_tokens") is not None:
            max_field, max_tokens = "max_completion_tokens", body["max_completion_tokens"]
        logprobs = None
        if body.get("logprobs"):
            logprobs = body.get("top_logprobs") or 0
        elif body.get("top_logprobs") is not None:
            raise bad_request("top_logprobs needs logprobs set to true", param="top_logprobs")
        lp_field = "top_logprobs"
    else:
        if max_tokens is None and "max_tokens" not in body:
            max_tokens = 16  # the completions API's default
        logprobs = body.get("logprobs")
        lp_field = "logprobs"
    if logprobs is not None and logprobs > opts.max_logprobs:
        raise bad_request(f"{lp_field} must be <= {opts.max_logprobs} (--max-logprobs), got {logprobs}", lp_field)
    n = body.get("n") or 1
    best_of = body.get("best_of")
    beam = bool(body.get("use_beam_search"))
    if best_of is not None and not beam:
        if best_of < n:
            raise bad_request(f"best_of must be >= n ({n}), got {best_of}", param="best_of")
        if best_of > n:
            if stream:
                raise bad_request("best_of > n cannot be streamed (the best ones are only known at the end)",
                                  param="best_of")
            n = best_of  # sample best_of, return the n best by cumulative logprob (select_best_of)
            if logprobs is None:
                logprobs = 0  # the ranking needs each token's logprob (not returned: strip_logprobs)
        best_of = None
    prompt_logprobs = body.get("prompt_logprobs")
    if not chat and body.get("echo") and logprobs is not None and prompt_logprobs is None:
        prompt_logprobs = logprobs
    kw: dict[str, Any] = {}
    if opts.generation_config == "auto" and not beam:  # beam search is deterministic: no sampling defaults
        kw.update(model.defaults)
    for k in ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
              "repetition_penalty", "seed", "stop", "stop_token_ids", "min_tokens", "ignore_eos",
              "include_stop_str_in_output", "skip_special_tokens", "spaces_between_special_tokens", "cache_salt",
              "truncate_prompt_tokens"):
        if body.get(k) is not None:
            kw[k] = body[k]
    vocab = model.engine.model_config.arch.vocab_size
    bias = parse_logit_bias(body, vocab)
    if bias:
        kw["logit_bias"] = bias
    if body.get("allowed_token_ids"):
        check_token_ids(model, body["allowed_token_ids"], "allowed_token_ids")
        kw["allowed_token_ids"] = list(body["allowed_token_ids"])
    if body.get("bad_words"):
        kw["bad_words"] = list(body["bad_words"])
        kw["bad_words_token_ids"] = bad_words_token_ids(model.engine.tokenizer, body["bad_words"])
    spec, _ = structured_outputs_from(body)
    if spec is not None:
        kw["structured_outputs"] = spec
    if beam:
        kw.setdefault("temperature", 0.0)
        kw.update(use_beam_search=True, best_of=best_of if best_of is not None else n)
        for k in ("length_penalty", "early_stopping"):
            if body.get(k) is not None:
                kw[k] = body[k]
    known = {k: k for k in kw}
    known["structured_outputs"] = "structured_outputs"
    known.update({"max_tokens": max_field, "logprobs": lp_field, "prompt_logprobs": "prompt_logprobs",
                  "n": "n", "best_of": "best_of", "beam_width": "best_of", "length_penalty": "length_penalty",
                  "early_stopping": "early_stopping"})
    try:
        sp = SamplingParams(n=n, max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
                            output_kind="delta" if stream else "final", **kw)
    except ValueError as e:
        raise from_value_error(e, known) from None
    return sp, max_field


async def check_constraints(body: dict, params: SamplingParams) -> None:
    """A structured-output spec is parsed (off the event loop) before the request is admitted."""
    if params.structured_outputs is not None:
        _, param = structured_outputs_from(body)
        await check_structured_outputs(params.structured_outputs, param or "structured_outputs")


def select_best_of(out: RequestOutput, n: int, keep_logprobs: bool) -> RequestOutput:
    """``best_of > n``: keep the ``n`` completions with the highest cumulative logprob (vLLM's rule),
    renumbered 0..n-1; their logprobs only if the request asked for them."""
    best = sorted(out.outputs, key=lambda c: -(c.cumulative_logprob or 0.0))[:n]
    for i, c in enumerate(best):
        c.index = i
        if not keep_logprobs:
            c.logprobs = None
    out.outputs = best
    return out


def truncate_prompt(ids: list[int], params: SamplingParams) -> list[int]:
    k = params.truncate_prompt_tokens
    return ids[-k:] if k is not None and len(ids) > k else ids


def prompt_logprobs_json(plp: list | None) -> list | None:
    """vLLM's shape: one entry per prompt token, None for the first, else
    ``{token_id: {"logprob", "rank", "decoded_token"}}`` (the prompt token and the top ones)."""
    if plp is None:
        return None
    return [None if d is None else {str(t): {"logprob": _lp(x.logprob), "rank": x.rank,
                                             "decoded_token": x.decoded_token} for t, x in d.items()}
            for d in plp]


def check_context(model: ServedModel, num_prompt_tokens: int, params: SamplingParams, max_field: str,
                  prompt_field: str) -> None:
    eng = model.engine
    if num_prompt_tokens == 0:
        raise bad_request(f"{prompt_field} is empty: at least one token is needed", param=prompt_field)
    try:
        eng.check_prompt_len(num_prompt_tokens)
    except ValueError as e:
        raise bad_request(str(e), param=prompt_field, code="context_length_exceeded") from None
    if params.max_tokens is not None and num_prompt_tokens + params.max_tokens > eng.max_model_len:
        raise bad_request(
            f"this model's maximum context length is {eng.max_model_len} tokens; the request asks for "
            f"{num_prompt_tokens + params.max_tokens} ({num_prompt_tokens} in the prompt, {params.max_tokens} "
            f"for the completion): lower {max_field} or shorten the prompt", param=max_field,
            code="context_length_exceeded")


def check_priority(model: ServedModel, body: dict) -> int:
    priority = body.get("priority") or 0
    if priority and model.engine.config.scheduler_config.policy != "priority":
        raise bad_request("priority needs the server to run with --scheduling-policy priority", param="priority")
    return priority


def encode_text(model: ServedModel, text: str, add_special_tokens: bool, param: str) -> list[int]:
    limit = model.engine.max_model_len * model.max_token_chars
    if len(text) > limit:
        raise bad_request(f"{param} is far longer than this model's maximum context length "
                          f"({model.engine.max_model_len} tokens)", param=param, code="context_length_exceeded")
    try:
        return model.engine.tokenizer.encode(text, add_special_tokens=add_special_tokens)
    except Exception:  # the body was checked for lone surrogates already; anything else is the tokenizer's
        logger.exception("tokenizer failed on %s", param)
        raise bad_request(f"{param} could not be tokenized", param=param) from None


def check_token_ids(model: ServedModel, ids: list[int], param: str) -> None:
    vocab = model.engine.model_config.arch.vocab_size
    for t in ids:
        if t >= vocab:
            raise bad_request(f"{param}: token id {t} is outside the vocabulary [0, {vocab})", param=param)


def admit(model: ServedModel, request_id: str, prompt: dict, params: SamplingParams, priority: int,
          arrival: float, check_queue: bool = True) -> RequestStream:
    """Hand a request to the engine; map refusals to HTTP errors. ``check_queue=False``: the caller checked
    the waiting-queue bound once for a request of several prompts (:func:`check_queue`)."""
    try:
        return model.engine.add_request(request_id, prompt, params, priority=priority, arrival_time=arrival,
                                        check_queue=check_queue, lora_request=model.lora_request)
    except QueueFullError as e:
        raise APIError(429, str(e), code="queue_full", headers={"Retry-After": "1"}) from None
    except EngineDeadError as e:
        raise APIError(503, f"the engine is not available: {e}", code="engine_dead") from None
    except ValueError as e:
        raise bad_request(str(e), param="prompt") from None


def check_num_sequences(num_prompts: int, params: SamplingParams, opts: ServerOptions) -> None:
    """A per-request cap on prompts x n (``--max-sequences-per-request``)."""
    num = num_prompts * max(params.n, params.best_of or 1)
    if num > opts.max_sequences_per_request:
        raise bad_request(f"this request asks for {num} sequences ({num_prompts} prompt(s) x n={params.n}"
                          f"{f', best_of={params.best_of}' if (params.best_of or 1) > params.n else ''}); the "
                          f"server allows at most {opts.max_sequences_per_request} per request "
                          "(--max-sequences-per-request)", param="prompt" if num_prompts > 1 else "n")


def check_queue(model: ServedModel) -> None:
    """The waiting-queue bound, checked once for a request of several prompts (429 when full)."""
    try:
        model.engine.check_queue()
    except QueueFullError as e:
        raise APIError(429, str(e), code="queue_full", headers={"Retry-After": "1"}) from None


def engine_failure(e: BaseException) -> APIError:
    if isinstance(e, RequestRejectedError):
        return bad_request(str(e), param="prompt")
    if isinstance(e, EngineDeadError):
        return APIError(503, f"the engine is not available: {e}", code="engine_dead")
    if isinstance(e, RequestAbortedError):
        return APIError(503, str(e), code="shutting_down")  # the server aborts requests only when it stops
    return APIError(500, f"internal error: {type(e).__name__}: {e}")


async def collect_final(stream: RequestStream) -> RequestOutput:
    final = None
    async for out in stream:
        final = out
    assert final is not None
    return final


async def first_and_rest(it: AsyncIterator[Any]) -> tuple[Any, AsyncIterator[Any]]:
    """Wait for a stream's first item before the HTTP response starts, so that errors raised
    before any token (engine down, request refused) are still proper HTTP errors."""
    try:
        first = await it.__anext__()
    except ENGINE_ERRORS as e:
        raise engine_failure(e) from None

    async def chained() -> AsyncIterator[Any]:
        yield first
        async for x in it:
            yield x

    return first, chained()


async def merge_streams(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several request streams (a completions request with several prompts)."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    q: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, s: RequestStream) -> None:
        try:
            async for out in s:
                await q.put((i, out, None))
        except BaseException as e:  # noqa: BLE001 — forwarded to the consumer
            await q.put((i, None, e))
            return
        await q.put((i, None, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, out, exc = await q.get()
            if exc is not None:
                raise exc
            if out is None:
                remaining -= 1
                continue
            yield i, out
    finally:
        for t in tasks:
            t.cancel()


def abort_unfinished(model: ServedModel, streams: list[RequestStream]) -> None:
    for s in streams:
        if not s.finished:
            model.engine.abort(s.request_id)


# -- formatting -----------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int, cached: int | None = None) -> dict:
    u: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}
    if cached:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return u


def _lp(v: float) -> float:
    return v if v > _SAFE_LOGPROB else _SAFE_LOGPROB


def _top(d: dict[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
    items = sorted(d.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)
    return items[:k]


def token_text(model: ServedModel, tid: int, lp: Logprob | None) -> str:
    if lp is not None and lp.decoded_token is not None:
        return lp.decoded_token
    tok = model.engine.tokenizer
    return tok.convert_tokens_to_string([tok.convert_ids_to_tokens(tid)])


def chat_logprobs(model: ServedModel, token_ids: list[int], logprobs: list[dict[int, Logprob]] | None,
                  k: int) -> dict | None:
    if logprobs is None:
        return None
    content = []
    for tid, d in zip(token_ids, logprobs):
        lp = d.get(tid)
        text = token_text(model, tid, lp)
        tops = []
        for t, x in _top(d, k):
            s = token_text(model, t, x)
            tops.append({"token": s, "logprob": _lp(x.logprob), "bytes": list(s.encode("utf-8", "replace"))})
        content.append({"token": text, "logprob": _lp(lp.logprob if lp else _SAFE_LOGPROB),
                        "bytes": list(text.encode("utf-8", "replace")), "top_logprobs": tops})
    return {"content": content}


def completion_logprobs(model: ServedModel, token_ids: list[int], logprobs: list[dict[int, Logprob] | None],
                        k: int, text_offset: int = 0) -> dict:
    tokens, token_lps, tops, offsets = [], [], [], []
    for tid, d in zip(token_ids, logprobs):
        lp = d.get(tid) if d else None
        text = token_text(model, tid, lp)
        tokens.append(text)
        token_lps.append(_lp(lp.logprob) if lp is not None else None)
        tops.append(_completion_top(model, tid, lp, d, k) if d else None)
        offsets.append(text_offset)
        text_offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def _completion_top(model: ServedModel, tid: int, lp: Logprob | None, d: dict[int, Logprob], k: int) -> dict:
    """The top ``k`` alternatives plus the chosen (or prompt) token itself, as vLLM returns them."""
    top = {token_text(model, t, x): _lp(x.logprob) for t, x in _top(d, k)}
    if lp is not None:
        top.setdefault(token_text(model, tid, lp), _lp(lp.logprob))
    return top


def finish_reason(reason: str | None) -> str | None:
    return reason


# -- Server-Sent Events ---------------------------------------------------------------------------
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def sse(obj: dict) -> bytes:
    return b"data: " + _dumps(obj).encode("utf-8", "replace") + b"\n\n"


def dumps(obj: Any) -> str:
    return _dumps(obj)


class ChunkTemplate:
    """The common streamed chunk — text only, no logprobs — rendered from pre-encoded pieces
    (20x cheaper than building and encoding the dict; the JSON is the same)."""

    def __init__(self, request_id: str, obj: str, created: int, model: str, include_usage: bool) -> None:
        head = _dumps({"id": request_id, "object": obj, "created": created, "model": model})
        self.prefix = ("data: " + head[:-1] + ',"choices":[{"index":').encode("utf-8", "replace")
        tail = ',"usage":null}\n\n' if include_usage else "}\n\n"
        self.text_tail = (',"logprobs":null,"finish_reason":null,"stop_reason":null}]' + tail).encode()
        self.delta_tail = ('},"logprobs":null,"finish_reason":null}]' + tail).encode()

    def text(self, index: int, text: str) -> bytes:
        """A completions chunk."""
        return b"".join((self.prefix, str(index).encode(), b',"text":', _dumps(text).encode("utf-8", "replace"),
                         self.text_tail))

    def content(self, index: int, text: str) -> bytes:
        """A chat chunk with a content delta."""
        return b"".join((self.prefix, str(index).encode(), b',"delta":{"content":',
                         _dumps(text).encode("utf-8", "replace"), self.delta_tail))


async def start_sse(request: web.Request, request_id: str) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={**SSE_HEADERS, "X-Request-Id": request_id})
    await resp.prepare(request)
    return resp


def json_response(obj: dict, request_id: str = "") -> web.Response:
    return web.Response(body=_dumps(obj).encode("utf-8", "replace"), content_type="application/json",
                        headers={"X-Request-Id": request_id} if request_id else None)
