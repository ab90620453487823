"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with the right status."""
from __future__ import annotations

import json
import re

from aiohttp import web

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        r = web.Response(status=self.status, text=json.dumps(self.body()), content_type="application/json",
                         headers=self.headers)
        if self.headers and self.headers.get("Connection") == "close":
            r.force_close()  # e.g. 408: the rest of the body may still come; the connection cannot be reused
        return r


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


_FIELD_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\b")


def from_value_error(e: ValueError, known: dict[str, str], default_param: str | None = None) -> APIError:
    """A ValueError from SamplingParams / the input processor → 400 naming the request field.

    The messages start with the offending field's name (``temperature must be ...``); ``known``
    maps those names to the request's names (``max_tokens`` → ``max_completion_tokens``)."""
    msg = str(e)
    m = _FIELD_RE.match(msg)
    param = default_param
    if m and m.group(1) in known:
        param = known[m.group(1)]
    return bad_request(msg, param=param)
