"""The server's OpenAPI 3.1 description (``GET /openapi.json``), built from the same schemas the
validator (:mod:`.validation`) checks requests against (:mod:`.protocol`)."""
from __future__ import annotations

from typing import Any

from pagedserve.entrypoints.openai import protocol as P

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def _body(fields: dict[str, dict], required: tuple[str, ...]) -> dict:
    return {"type": "object", "properties": fields, "required": list(required), "additionalProperties": False}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Invalid request (the error's param names the field)", 401: "Missing or wrong API key",
            404: "Unknown model", 413: "Request body too large", 429: "The waiting queue is full",
            503: "Engine unavailable or server shutting down"}
    return {str(c): {"description": text[c], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}} for c in codes}


def _post(summary: str, schema_ref: str, ok: dict, stream: bool = False, auth: bool = True) -> dict:
    content = {"application/json": {"schema": ok}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string"},
                                        "description": "with stream=true: Server-Sent Events, `data: [DONE]` last"}
    op = {"summary": summary,
          "requestBody": {"required": True, "content": {"application/json": {
              "schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}},
          "responses": {"200": {"description": "OK", "content": content},
                        **_errors(400, 404, 413, 429, 503, *((401,) if auth else ()))}}
    if auth:
        op["security"] = [{"bearer": []}, {}]
    return {"post": op}


def _get(summary: str, content_type: str = "application/json", schema: dict | None = None,
         extra: tuple[int, ...] = ()) -> dict:
    return {"get": {"summary": summary, "responses": {
        "200": {"description": "OK", "content": {content_type: {"schema": schema or {"type": "object"}}}},
        **_errors(*extra)}}}


def openapi_document(version: str) -> dict:
    obj = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "pagedserve OpenAI-compatible API", "version": version,
                 "description": "OpenAI-compatible completions and chat completions with vLLM's extra "
                                "sampling parameters. Unknown request fields are rejected (400)."},
        "paths": {
            "/v1/completions": _post("Create a completion", "CompletionRequest", obj, stream=True),
            "/v1/chat/completions": _post("Create a chat completion", "ChatCompletionRequest", obj, stream=True),
            "/v1/models": _get("List served models", extra=(401,)),
            "/v1/models/{model}": {"get": {
                "summary": "Describe one served model",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": obj}}},
                              **_errors(401, 404)}}},
            "/tokenize": _post("Tokenize a prompt or chat messages", "TokenizeRequest", obj),
            "/detokenize": _post("Turn token ids back into text", "DetokenizeRequest", obj),
            "/health": _get("200 when every engine is up, 503 otherwise", extra=(503,)),
            "/metrics": _get("Prometheus metrics (prefix pagedserve:)", "text/plain", {"type": "string"}),
            "/version": _get("Server version"),
            "/reset_prefix_cache": {"post": {
                "summary": "Forget every model's free cached prefix blocks (benchmarks); needs the API key",
                "responses": {"200": {"description": "OK: {\"dropped_blocks\": {model: count}}",
                                      "content": {"application/json": {"schema": obj}}}, **_errors(401)}}},
            "/openapi.json": _get("This document"),
        },
        "components": {
            "schemas": {
                "CompletionRequest": _body(P.COMPLETION_FIELDS, P.COMPLETION_REQUIRED),
                "ChatCompletionRequest": _body(P.CHAT_FIELDS, P.CHAT_REQUIRED),
                "TokenizeRequest": _body(P.TOKENIZE_FIELDS, ()),
                "DetokenizeRequest": _body(P.DETOKENIZE_FIELDS, ("tokens",)),
                "ErrorResponse": _ERROR,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "Needed when the server runs with --api-key"}},
        },
    }
