"""Writing ``multipart/related`` responses part by part (RFC 2387, PS3.18 §8.7.1)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from aiohttp import StreamReader, web

# The CRLF that ends a part's body (it belongs to the next delimiter, RFC 2046 §5.1.1).
PART_END = b"\r\n"


def new_boundary() -> str:
    return uuid.uuid4().hex


class MultipartWriter:
    """Streams parts of one media type into a prepared :class:`aiohttp.web.StreamResponse`."""

    def __init__(self, response: web.StreamResponse, boundary: str) -> None:
        self.response = response
        self.boundary = boundary

    @staticmethod
    def content_type(boundary: str, part_type: str, transfer_syntax: str | None = None) -> str:
        value = f'multipart/related; type="{part_type}"; boundary={boundary}'
        if transfer_syntax:
            value += f"; transfer-syntax={transfer_syntax}"
        return value

    @staticmethod
    def part_head(boundary: str, headers: dict[str, str]) -> bytes:
        """Delimiter and headers of a part (its body follows, then :data:`PART_END`)."""
        lines = [f"--{boundary}"] + [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    @staticmethod
    def closing(boundary: str) -> bytes:
        return f"--{boundary}--\r\n".encode("latin-1")

    async def begin_part(self, headers: dict[str, str]) -> None:
        await self.response.write(self.part_head(self.boundary, headers))

    async def end_part(self) -> None:
        await self.response.write(PART_END)

    async def close(self) -> None:
        await self.response.write(self.closing(self.boundary))


class MultipartError(ValueError):
    """The body is not well-formed multipart (boundary, framing, truncation)."""


class MultipartReader:
    """Reads a multipart body (RFC 2046 §5.1) part by part from an aiohttp stream.

    Each part's body is handed out in chunks of about ``chunk_size`` bytes as it arrives; at most
    one chunk plus one network read is buffered, whatever the size of the part. The boundary is
    found with ``bytes.find`` on the buffer (rescanning only the last ``len(delimiter)`` bytes),
    which keeps the per-byte cost in C.
    """

    MAX_HEADERS = 16 * 1024

    def __init__(self, stream: StreamReader, boundary: str, chunk_size: int = 1 << 20) -> None:
        if not boundary or len(boundary) > 200:
            raise MultipartError("invalid boundary")
        self._stream = stream
        self._delim = b"\r\n--" + boundary.encode("latin-1")
        self._chunk = chunk_size
        # A leading CRLF lets the first boundary be found like every later one.
        self._buf = bytearray(b"\r\n")
        self._state = "preamble"  # -> "headers" -> "body" -> "headers" ... -> "end"

    async def _fill(self) -> bool:
        data = await self._stream.readany()
        if not data:
            return False
        self._buf += data
        return True

    async def _find(self, needle: bytes, limit: int | None, what: str) -> int:
        start = 0
        while True:
            idx = self._buf.find(needle, start)
            if idx >= 0:
                return idx
            if limit is not None and len(self._buf) > limit:
                raise MultipartError(f"{what} too long")
            start = max(0, len(self._buf) - len(needle) + 1)
            if not await self._fill():
                raise MultipartError(f"body truncated in {what}")

    async def next_part(self) -> dict[str, str] | None:
        """Advance to the next part; its headers (lower-cased names), or None after the last."""
        if self._state == "body":
            async for _ in self.read_chunks():
                pass
        if self._state == "end":
            return None
        if self._state == "preamble":
            idx = await self._find(self._delim, 1 << 20, "preamble")
            del self._buf[:idx + len(self._delim)]
        # After a delimiter: "--" closes the body, else transport padding and CRLF, then headers.
        while len(self._buf) < 2:
            if not await self._fill():
                raise MultipartError("body truncated after a boundary")
        if self._buf[:2] == b"--":
            self._state = "end"
            return None
        end = await self._find(b"\r\n\r\n", self.MAX_HEADERS, "part headers")
        block = bytes(self._buf[:end])
        del self._buf[:end + 4]
        first, _, rest = block.partition(b"\r\n")
        if first.strip(b" \t"):
            raise MultipartError("garbage after a boundary")
        headers: dict[str, str] = {}
        for line in rest.split(b"\r\n") if rest else []:
            name, sep, value = line.partition(b":")
            if not sep:
                raise MultipartError("malformed part header")
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
        self._state = "body"
        return headers

    def _take(self, n: int) -> bytes:
        """The first ``n`` buffered bytes, removed from the buffer: one copy (``bytes(buf[:n])``
        made two, the slice and the bytes)."""
        with memoryview(self._buf) as view:
            chunk = bytes(view[:n])
        del self._buf[:n]  # cheap: a bytearray drops its head by moving its start
        return chunk

    async def read_chunks(self) -> AsyncIterator[bytes]:
        """The current part's body, in chunks, up to (not including) the next delimiter."""
        if self._state != "body":
            return
        delim = self._delim
        start = 0
        while True:
            idx = self._buf.find(delim, start)
            if idx >= 0:
                if idx:
                    yield self._take(idx)
                del self._buf[:len(delim)]
                self._state = "delimiter"
                return
            safe = len(self._buf) - len(delim) + 1  # bytes that cannot start a delimiter
            if safe >= self._chunk:
                yield self._take(safe)
                safe = 0
            start = max(0, safe)
            if not await self._fill():
                raise MultipartError("body truncated in a part")
