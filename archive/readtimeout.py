"""``[http] read_timeout``: close a connection whose client stops sending in the middle of a
request (slow clients, "slowloris").

aiohttp has no read timeout of its own: a client that sends half the request headers, or part of
a body, and then nothing, holds its connection (and the request's handler, and for STOW-RS an
open temporary file) for as long as the TCP connection lives. This is an IDLE timeout: the clock
restarts at every byte received, so a large upload that keeps moving is never cut, however long
it takes. It runs only while the server waits for the client:

* the headers of a request have begun but are not complete, or
* a request's handler runs and its body has not all arrived, and the server is not itself
  holding the client back (reading paused because the handler has not consumed what came).

Between requests of a keep-alive connection aiohttp's own ``keepalive_timeout`` applies.

aiohttp offers no hook for this, so the runner makes the server build connections with a
subclass of its ``RequestHandler`` that reads a few of its attributes; tests/test_slow_clients.py
pins the behaviour against the installed aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

log = logging.getLogger("archive.http")


class _Handler(RequestHandler):
    """A RequestHandler that closes its connection after ``read_timeout`` seconds without a byte
    while a request is incomplete."""

    def __init__(self, manager: Server, *, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._read_timeout = read_timeout
        self._last_rx = 0.0
        self._rt_handle: asyncio.TimerHandle | None = None
        # The body of the latest request parsed, and whether bytes of a next request's headers
        # (not yet a whole request) have arrived since.
        self._rt_body: Any = None
        self._rt_head = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._last_rx = self._loop.time()
        self._rt_handle = self._loop.call_at(self._last_rx + self._read_timeout, self._rt_check)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._rt_handle is not None:
            self._rt_handle.cancel()
            self._rt_handle = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not data:
            super().data_received(data)
            return
        self._last_rx = self._loop.time()
        count = self._request_count
        body_open = self._rt_body is not None and not self._rt_body.is_eof()
        super().data_received(data)
        if self._request_count != count:
            # A request's headers completed. (Bytes of a further request in the same segment
            # are not seen here; keepalive_timeout still bounds them.)
            self._rt_body = self._messages[-1][1] if self._messages else None
            self._rt_head = False
        else:
            self._rt_head = not body_open

    def _stalled(self) -> bool:
        """True if the server is waiting for bytes the client should be sending."""
        if self._reading_paused or self._buffer_paused:
            return False  # the server holds the client back, not the other way round
        request = self._current_request
        if request is not None:
            return not request.content.is_eof()
        return self._rt_head and not self._messages and self._waiter is not None

    def _rt_check(self) -> None:
        self._rt_handle = None
        if self._force_close or self.transport is None:
            return
        now = self._loop.time()
        due = self._last_rx + self._read_timeout
        if now >= due:
            if self._stalled():
                log.warning("closing a connection from %s: nothing received for %g s in the middle "
                            "of a request ([http] read_timeout)", self.peername, self._read_timeout)
                self.force_close()
                return
            due = now + self._read_timeout
        self._rt_handle = self._loop.call_at(due, self._rt_check)


class _Server(Server):
    read_timeout: float = 0.0

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, read_timeout=self.read_timeout, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections close after ``read_timeout`` idle seconds in the middle
    of a request (0: never)."""

    def __init__(self, app: web.Application, *, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._read_timeout = read_timeout

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        if not self._read_timeout:
            return server
        ours = _Server(server.request_handler, request_factory=server.request_factory,
                       handler_cancellation=server.handler_cancellation, loop=server._loop,
                       **server._kwargs)
        ours.read_timeout = self._read_timeout
        return ours
