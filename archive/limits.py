"""HTTP limits and in-flight tracking: ``[http] max_concurrent_requests`` (503 beyond it),
``[http] max_request_size`` (413), and the count of running requests a graceful shutdown waits for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.streams import StreamReader

log = logging.getLogger("archive.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths outside the limits: a load balancer's health check must see a busy server as alive.
_EXEMPT = frozenset({"/healthz"})


class RequestGate:
    """Counts the requests being handled; refuses those beyond ``max_concurrent`` (0: no limit)."""

    def __init__(self, max_concurrent: int, max_body: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_body = max_body
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def _too_large(self, size: int) -> web.HTTPRequestEntityTooLarge:
        return web.HTTPRequestEntityTooLarge(
            max_size=self.max_body, actual_size=size,
            text=f"request body larger than the server's maximum of {self.max_body} bytes "
                 "([http] max_request_size)")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _EXEMPT:
            return await handler(request)
        if self.max_concurrent and self.active >= self.max_concurrent:
            raise web.HTTPServiceUnavailable(
                text=f"too many requests in progress (the server's maximum is {self.max_concurrent}); "
                     "retry later", headers={"Retry-After": "1"})
        if self.max_body and (request.content_length or 0) > self.max_body:
            raise self._too_large(request.content_length or 0)
        self.active += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    def body(self, request: web.Request) -> StreamReader:
        """The request body, cut at ``max_request_size`` with a 413 (for a streamed body whose
        Content-Length did not say, e.g. chunked transfer coding)."""
        if not self.max_body:
            return request.content
        return _LimitedBody(request.content, self)  # type: ignore[return-value]

    async def drain(self, timeout: float) -> bool:
        """Wait until no request is being handled (at most ``timeout`` s); True if none is."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class _LimitedBody:
    """The part of StreamReader the multipart reader uses, counting bytes."""

    def __init__(self, stream: StreamReader, gate: RequestGate) -> None:
        self._stream = stream
        self._gate = gate
        self._read = 0

    async def readany(self) -> bytes:
        data = await self._stream.readany()
        self._read += len(data)
        if self._read > self._gate.max_body:
            raise self._gate._too_large(self._read)
        return data


GATE = web.AppKey("gate", RequestGate)
