"""OpenAI-shaped error responses of the router itself."""
from __future__ import annotations

import json

from aiohttp import web

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          413: "invalid_request_error", 502: "server_error", 503: "server_error"}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")
