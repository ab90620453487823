"""The operator tests' stand-in API server (tests/operator/standin_apiserver.py, unchanged) with one
addition for the router's discovery: the first watch that resumes from a ``resourceVersion`` is
answered with ``410 Gone`` (an ERROR event, as kube-apiserver does once that version is
compacted), so the client must relist.

Run: ``python standin_gone.py PORT`` (prints ``READY <url>``).
"""
from __future__ import annotations

import asyncio
import pathlib
import signal
import sys
from typing import Any, AsyncIterator

import attrs

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "operator"))
import standin_apiserver  # noqa: E402

GONE = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                    "message": "too old resource version", "reason": "Expired", "code": 410}}


@attrs.define(kw_only=True)
class GoneOnceStandIn(standin_apiserver.StandInAPIServer):
    gone_left: int = 1

    async def _serve_watch(self, request: Any) -> AsyncIterator[Any]:
        if request.params.get("resourceVersion") and self.gone_left > 0:
            self.gone_left -= 1
            print(f"410 Gone for a watch from resourceVersion {request.params['resourceVersion']}", flush=True)
            yield b""
            yield GONE
            return
        async for item in super()._serve_watch(request):
            yield item


def main() -> None:
    standin_apiserver.StandInAPIServer = GoneOnceStandIn  # serve() builds the server by this name

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await standin_apiserver.serve(int(sys.argv[1]), stop=stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
