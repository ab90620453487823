"""Request bodies of the OpenAI-compatible API as JSON schemas.

The same schemas are served at ``/openapi.json`` (see :mod:`.openapi`) and checked by
:mod:`.validation`, so the description and the checks cannot drift apart. Validation errors are
HTTP 400 naming the field (``param``), e.g. ``messages[0].role``. Unknown top-level fields are
rejected, as OpenAI does; vLLM's extra sampling fields (``top_k``, ``min_p``, ``ignore_eos``, ...)
are known fields here.
"""
from __future__ import annotations

from typing import Any

from pagedserve.entrypoints.openai.errors import APIError, bad_request

INT64_MIN, UINT64_MAX, INT32_MAX = -(2**63), 2**64 - 1, 2**31 - 1
MAX_LOGPROBS = 20


# -- schema builders ------------------------------------------------------------------------------
def _t(kind: str, nullable: bool, **kw: Any) -> dict:
    return {"type": [kind, "null"] if nullable else kind, **kw}


def integer(lo: int | None = None, hi: int | None = None, nullable: bool = True, **kw: Any) -> dict:
    s = _t("integer", nullable, **kw)
    if lo is not None:
        s["minimum"] = lo
    if hi is not None:
        s["maximum"] = hi
    return s


def number(lo: float | None = None, hi: float | None = None, exclusive_lo: bool = False, nullable: bool = True,
           **kw: Any) -> dict:
    s = _t("number", nullable, **kw)
    if lo is not None:
        s["exclusiveMinimum" if exclusive_lo else "minimum"] = lo
    if hi is not None:
        s["maximum"] = hi
    return s


def boolean(nullable: bool = True, **kw: Any) -> dict:
    return _t("boolean", nullable, **kw)


def string(nullable: bool = True, enum: list[str] | None = None, max_length: int | None = None, **kw: Any) -> dict:
    s = _t("string", nullable, **kw)
    if enum is not None:
        s["enum"] = list(enum) + ([None] if nullable else [])
    if max_length is not None:
        s["maxLength"] = max_length
    return s


def array(items: dict, min_items: int | None = None, max_items: int | None = None, nullable: bool = True,
          **kw: Any) -> dict:
    s = _t("array", nullable, items=items, **kw)
    if min_items is not None:
        s["minItems"] = min_items
    if max_items is not None:
        s["maxItems"] = max_items
    return s


def obj(props: dict[str, dict] | None = None, required: tuple[str, ...] = (), additional: bool | dict = False,
        nullable: bool = True, **kw: Any) -> dict:
    s = _t("object", nullable, **kw)
    if props is not None:
        s["properties"] = props
    if required:
        s["required"] = list(required)
    s["additionalProperties"] = additional
    return s


def any_of(*schemas: dict, nullable: bool = False, **kw: Any) -> dict:
    opts = list(schemas) + ([{"type": "null"}] if nullable else [])
    return {"anyOf": opts, **kw}


# -- the request schemas --------------------------------------------------------------------------
TOKEN_ID = integer(lo=0, nullable=False)
STOP = any_of(string(nullable=False), array(string(nullable=False), max_items=1024, nullable=False),
              nullable=True, description="Up to 1024 stop strings; the output stops before the first one.")

SAMPLING_FIELDS: dict[str, dict] = {
    "model": string(description="Served model name (default: the first served model)."),
    "n": integer(1, 1024, description="Number of completions per prompt."),
    "best_of": integer(1, 1024, description="Sample best_of completions, return the n with the highest "
                                            "cumulative logprob (with use_beam_search: the beam width)."),
    "temperature": number(0.0, 100.0),
    "top_p": number(0.0, 1.0, exclusive_lo=True),
    "top_k": integer(-1, INT32_MAX, description="-1 or 0 disables top-k."),
    "min_p": number(0.0, 1.0),
    "presence_penalty": number(-2.0, 2.0),
    "frequency_penalty": number(-2.0, 2.0),
    "repetition_penalty": number(0.0, 100.0, exclusive_lo=True),
    "seed": integer(INT64_MIN, UINT64_MAX),
    "stop": STOP,
    "stop_token_ids": array(TOKEN_ID, max_items=1024),
    "include_stop_str_in_output": boolean(),
    "ignore_eos": boolean(),
    "min_tokens": integer(0, INT32_MAX),
    "max_tokens": integer(1, INT32_MAX),
    "skip_special_tokens": boolean(),
    "spaces_between_special_tokens": boolean(),
    "prompt_logprobs": integer(0, MAX_LOGPROBS),
    "stream": boolean(),
    "stream_options": obj({"include_usage": boolean(), "continuous_usage_stats": boolean()}),
    "user": string(max_length=4096),
    "priority": integer(INT64_MIN, 2**63 - 1, description="Lower runs first (--scheduling-policy priority)."),
    "logit_bias": obj(additional=number(-100.0, 100.0, nullable=False),
                      description="Token id (as a string) → bias added to its logit."),
    "allowed_token_ids": array(TOKEN_ID, min_items=1, max_items=1 << 20,
                               description="Only these tokens may be sampled."),
    "bad_words": array(string(nullable=False, max_length=1024), max_items=1024,
                       description="Words the output must not contain (banned token by token)."),
    "truncate_prompt_tokens": integer(1, INT32_MAX, description="Keep only the last k prompt tokens."),
    "structured_outputs": obj({"json": any_of(obj(additional=True, nullable=False), string(nullable=False),
                                              nullable=True),
                               "regex": string(), "choice": array(string(nullable=False), min_items=1),
                               "grammar": string(), "json_object": boolean(), "disable_any_whitespace": boolean(),
                               "disable_fallback": boolean(), "disable_additional_properties": boolean(),
                               "whitespace_pattern": string()},
                              description="vLLM's constrained decoding: one of json (a JSON schema), regex, "
                                          "choice, grammar (EBNF) or json_object."),
    "guided_json": any_of(obj(additional=True, nullable=False), string(nullable=False), nullable=True,
                          description="Legacy vLLM field: structured_outputs.json."),
    "guided_regex": string(description="Legacy vLLM field: structured_outputs.regex."),
    "guided_choice": array(string(nullable=False), min_items=1,
                           description="Legacy vLLM field: structured_outputs.choice."),
    "guided_grammar": string(description="Legacy vLLM field: structured_outputs.grammar."),
    "guided_decoding_backend": string(description="Ignored (the backend is xgrammar)."),
    "guided_whitespace_pattern": string(description="Ignored."),
    "use_beam_search": boolean(description="Beam search (temperature 0); best_of is the beam width, n the "
                                           "number of beams returned."),
    "length_penalty": number(-100.0, 100.0),
    "early_stopping": any_of(boolean(nullable=False), string(nullable=False), nullable=True),
    "request_id": string(max_length=256),
    "cache_salt": string(max_length=1024, description="Prefix-cache isolation: only requests with the same salt "
                                                      "share cached blocks."),
    "add_special_tokens": boolean(),
    "echo": boolean(),
    "response_format": obj({"type": string(nullable=False, enum=["text", "json_object", "json_schema"]),
                            "json_schema": obj({"name": string(max_length=256), "description": string(),
                                                "schema": obj(additional=True), "strict": boolean()},
                                               additional=True)}, required=("type",)),
}

_PROMPT = any_of(
    string(nullable=False),
    array(string(nullable=False), min_items=1, nullable=False),
    array(TOKEN_ID, min_items=1, nullable=False),
    array(array(TOKEN_ID, min_items=1, nullable=False), min_items=1, nullable=False),
    description="Text, a list of texts, token ids, or a list of token-id lists.")

COMPLETION_FIELDS: dict[str, dict] = {
    **SAMPLING_FIELDS,
    "prompt": _PROMPT,
    "logprobs": integer(0, MAX_LOGPROBS, description="Number of top logprobs per token."),
    "suffix": string(description="Not supported: text after the completion (fill-in-the-middle) needs a model "
                                 "trained for it; a non-null value is a 400."),
}
COMPLETION_REQUIRED = ("prompt",)

_TEXT_PART = obj({"type": string(nullable=False), "text": string(nullable=False)}, required=("type",),
                 additional=True, nullable=False)
MESSAGE = obj({
    "role": string(nullable=False, enum=["system", "user", "assistant", "tool", "developer"]),
    "content": any_of(string(nullable=False), array(_TEXT_PART, nullable=False), nullable=True),
    "name": string(max_length=256),
    "tool_calls": array(obj(additional=True, nullable=False)),
    "tool_call_id": string(),
    "refusal": string(),
    "reasoning_content": string(),
}, required=("role",), nullable=False)

CHAT_FIELDS: dict[str, dict] = {
    **SAMPLING_FIELDS,
    "messages": array(MESSAGE, min_items=1, nullable=False),
    "max_completion_tokens": integer(1, INT32_MAX),
    "logprobs": boolean(),
    "top_logprobs": integer(0, MAX_LOGPROBS),
    "tools": array(obj({"type": string(nullable=False, enum=["function"]),
                        "function": obj({"name": string(nullable=False, max_length=256), "description": string(),
                                         "parameters": obj(additional=True), "strict": boolean()},
                                        required=("name",), nullable=False)},
                       required=("type", "function"), nullable=False), max_items=1024,
                   description="Functions the model may call (rendered through the chat template's tools)."),
    "tool_choice": any_of(string(nullable=False, enum=["none", "auto", "required"]), obj(additional=True),
                          nullable=True),
    "parallel_tool_calls": boolean(),
    "functions": array(obj(additional=True, nullable=False),
                       description="Deprecated OpenAI field: not supported (use tools)."),
    "function_call": any_of(string(nullable=False), obj(additional=True), nullable=True),
    "modalities": array(string(nullable=False, enum=["text"])),
    "store": boolean(),
    "metadata": obj(additional=string(nullable=False)),
    "service_tier": string(),
    "reasoning_effort": string(),
    "verbosity": string(),
    "add_generation_prompt": boolean(),
    "continue_final_message": boolean(),
    "chat_template": string(description="Needs --trust-request-chat-template on the server."),
    "chat_template_kwargs": obj(additional=True),
}
CHAT_REQUIRED = ("messages",)

TOKENIZE_FIELDS: dict[str, dict] = {
    "model": string(),
    "prompt": string(),
    "messages": array(MESSAGE, min_items=1),
    "add_special_tokens": boolean(),
    "add_generation_prompt": boolean(),
    "continue_final_message": boolean(),
    "chat_template": string(description="Needs --trust-request-chat-template on the server."),
    "chat_template_kwargs": obj(additional=True),
    "return_token_strs": boolean(),
}
DETOKENIZE_FIELDS: dict[str, dict] = {"model": string(), "tokens": array(TOKEN_ID, nullable=False)}


def require_supported(body: dict) -> None:
    """Fields that are accepted by the schema but whose features are not built: fail clearly."""
    if body.get("use_beam_search") and body.get("stream"):
        raise bad_request("use_beam_search cannot be streamed (the beams are only known at the end)",
                          param="stream")
    if body.get("suffix") is not None:
        raise bad_request("suffix is not supported: this server does not do fill-in-the-middle completions; "
                          "put all the text in prompt", param="suffix")
    if body.get("functions"):
        raise bad_request("functions (deprecated) is not supported: use tools", param="functions")
    if body.get("function_call") not in (None, "none", "auto"):
        raise bad_request("function_call (deprecated) is not supported: use tool_choice", param="function_call")
    if body.get("response_format") is not None and body["response_format"].get("type") == "json_schema":
        js = body["response_format"].get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
            raise bad_request("response_format.json_schema must be an object with a 'schema' (a JSON schema)",
                              param="response_format.json_schema")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise bad_request("stream_options is only allowed when stream is true", param="stream_options")


def api_error_for(status: int, message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(status, message, param=param, code=code)
