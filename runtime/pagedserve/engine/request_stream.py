"""``RequestStream``: the outputs of one request as the server reads them. The engine puts
outputs in as they come; a consumer that falls behind finds the unread ones merged (deltas
concatenated) instead of queued, so a slow client never slows the engine and never grows a queue."""
from __future__ import annotations

import asyncio

from pagedserve.outputs import CompletionOutput, RequestOutput


def _merge(old: RequestOutput, new: RequestOutput, delta: bool) -> RequestOutput:
    """Fold a newer output into one the consumer has not read yet."""
    if not delta:
        return new
    by_index = {c.index: c for c in old.outputs}
    merged: list[CompletionOutput] = []
    for c in new.outputs:
        o = by_index.pop(c.index, None)
        if o is None:
            merged.append(c)
            continue
        o.text += c.text
        o.token_ids = list(o.token_ids) + list(c.token_ids)
        if c.logprobs is not None:
            o.logprobs = (o.logprobs or []) + list(c.logprobs)
        o.cumulative_logprob, o.finish_reason, o.stop_reason = c.cumulative_logprob, c.finish_reason, c.stop_reason
        merged.append(o)
    merged.extend(by_index.values())
    merged.sort(key=lambda c: c.index)
    new.outputs = merged
    return new


class RequestStream:
    """Outputs of one request, in order; unread deltas are merged instead of queued."""

    __slots__ = ("request_id", "delta", "_pending", "_exc", "_waiter", "_done", "waiting")

    def __init__(self, request_id: str, delta: bool) -> None:
        self.request_id = request_id
        self.delta = delta
        self._pending: RequestOutput | None = None
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future | None = None  # the consumer's, while it waits
        self._done = False
        self.waiting = True  # no token yet: counts toward max_waiting_requests

    @property
    def finished(self) -> bool:
        return self._done

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def put(self, out: RequestOutput) -> None:
        self._pending = out if self._pending is None else _merge(self._pending, out, self.delta)
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if self._exc is None:
            self._exc = exc
        self._wake()

    async def get(self) -> RequestOutput:
        while True:
            out = self._pending
            if out is not None:
                self._pending = None
                if out.finished:
                    self._done = True
                return out
            if self._done:
                raise StopAsyncIteration
            if self._exc is not None:
                self._done = True
                raise self._exc
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        return await self.get()
