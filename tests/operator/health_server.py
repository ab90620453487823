"""A stand-in for a starting runtime's /health: an aiohttp server on 127.0.0.1 (free port) in a
thread, answering ``GET /health`` with the status code and JSON body the test sets."""
from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

from isvc_cluster import free_port


class HealthServer:
    """``code`` and ``body`` (None: a non-JSON body) are read on every request."""

    def __init__(self) -> None:
        self.port = free_port()
        self.code = 503
        self.body: dict[str, Any] | None = {'status': 'downloading', 'message': 'starting'}
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError('the /health server did not start')

    def set(self, code: int, body: dict[str, Any] | None) -> None:
        self.code, self.body = code, body

    async def _health(self, _: web.Request) -> web.Response:
        if self.body is None:
            return web.Response(status=self.code, text='not json')
        return web.json_response(self.body, status=self.code)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get('/health', self._health)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, '127.0.0.1', self.port).start())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
