"""Writing ``multipart/related`` responses part by part (RFC 2387, PS3.18 §8.7.1)."""

from __future__ import annotations

import uuid

from aiohttp import web


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

    async def begin_part(self, headers: dict[str, str]) -> None:
        lines = [f"--{self.boundary}"] + [f"{k}: {v}" for k, v in headers.items()]
        await self.response.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def end_part(self) -> None:
        await self.response.write(b"\r\n")

    async def close(self) -> None:
        await self.response.write(f"--{self.boundary}--\r\n".encode("latin-1"))
