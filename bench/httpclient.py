"""The HTTP client side of the benchmark: STOW-RS uploads, streamed downloads, timed GETs.

All traffic goes to 127.0.0.1. One ``download`` function serves both the WADO-RS retrieve and the
plain-file GET of the machine-limit step, so the two figures compare like with like.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
CHUNK = 1 << 20


def session(connections: int) -> aiohttp.ClientSession:
    """A client session for loopback benchmarking: no total timeout, keep-alive, N connections."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    return aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False)


# ------------------------------------------------------------------------------------------ STOW


def multipart_body(parts: list[bytes], boundary: str) -> bytes:
    """A ``multipart/related`` body of ``application/dicom`` parts (PS3.18 8.6.1.2)."""
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
    chunks: list[bytes] = []
    for part in parts:
        chunks += [head, part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks)


@dataclass
class StowFailure:
    batch: int
    status: int
    detail: str


@dataclass
class StowResult:
    requests: int = 0
    instances: int = 0
    bytes: int = 0
    seconds: float = 0.0
    failures: list[StowFailure] = field(default_factory=list)

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


def _check_stow_reply(status: int, body: bytes, expected: int) -> str | None:
    """None when the reply is 200 and references every instance sent; else what is wrong."""
    text = body[:600].decode("utf-8", "replace")
    if status != 200:
        return text
    try:
        reply = json.loads(body)
    except ValueError:
        return f"200 but body is not JSON: {text}"
    reply = reply[0] if isinstance(reply, list) and reply else reply
    if not isinstance(reply, dict):
        return f"200 but unexpected JSON: {text}"
    failed = reply.get(FAILED_SOP_SEQUENCE, {}).get("Value", [])
    referenced = reply.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
    if failed or len(referenced) != expected:
        return f"200 but {len(referenced)}/{expected} referenced, {len(failed)} failed: {text}"
    return None


async def _post_batch(http: aiohttp.ClientSession, url: str, parts: list[bytes]) -> tuple[int, bytes]:
    boundary = f"bench-{uuid.uuid4().hex}"
    body = await asyncio.to_thread(multipart_body, parts, boundary)
    headers = {"Content-Type": f"{MULTIPART_DICOM}; boundary={boundary}", "Accept": DICOM_JSON}
    async with http.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.read()


async def stow(url: str, batches: Iterator[list[bytes]], clients: int,
               on_progress: Callable[[StowResult], None] | None = None) -> StowResult:
    """POST every batch with ``clients`` concurrent uploaders; time from first send to last reply."""
    result, lock, counter = StowResult(), asyncio.Lock(), iter(range(10**9))

    async def next_batch() -> tuple[int, list[bytes]] | None:
        async with lock:  # the iterator reads files: one thread at a time, off the event loop
            batch = await asyncio.to_thread(next, batches, None)
            return None if batch is None else (next(counter), batch)

    async def uploader(http: aiohttp.ClientSession) -> None:
        while (item := await next_batch()) is not None:
            number, parts = item
            status, body = await _post_batch(http, url, parts)
            problem = _check_stow_reply(status, body, len(parts))
            result.requests += 1
            result.instances += len(parts)
            result.bytes += sum(map(len, parts))
            if problem is not None:
                result.failures.append(StowFailure(number, status, problem))
            if on_progress is not None:
                on_progress(result)

    async with session(clients) as http:
        start = time.perf_counter()
        await asyncio.gather(*(uploader(http) for _ in range(clients)))
        result.seconds = time.perf_counter() - start
    return result


# -------------------------------------------------------------------------------------- download


@dataclass
class Download:
    status: int
    content_type: str
    bytes: int
    seconds: float
    parts: int | None = None  # multipart parts counted, when asked
    head: bytes = b""

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


def boundary_of(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            return value.strip().strip('"')
    return None


class _PartCounter:
    """Counts ``--boundary`` delimiters across chunk edges; parts = delimiters - 1 (the close one)."""

    def __init__(self, boundary: str) -> None:
        self.marker = f"--{boundary}".encode("ascii")
        self.tail = b""
        self.count = 0

    def feed(self, chunk: bytes) -> None:
        data = self.tail + chunk
        self.count += data.count(self.marker)
        keep = len(self.marker) - 1
        self.tail = data[-keep:]  # shorter than the marker: never holds an occurrence already counted

    @property
    def parts(self) -> int:
        return max(0, self.count - 1)


async def download(http: aiohttp.ClientSession, url: str, accept: str, count_parts: bool = False
                   ) -> Download:
    """GET ``url`` and stream the body, counting bytes without keeping them."""
    start = time.perf_counter()
    async with http.get(url, headers={"Accept": accept}) as resp:
        content_type = resp.headers.get("Content-Type", "")
        boundary = boundary_of(content_type) if count_parts else None
        counter = _PartCounter(boundary) if boundary else None
        total, head = 0, b""
        async for chunk in resp.content.iter_any():
            total += len(chunk)
            if len(head) < 600:
                head += chunk[: 600 - len(head)]
            if counter is not None:
                counter.feed(chunk)
        seconds = time.perf_counter() - start
    parts = counter.parts if counter is not None else None
    return Download(resp.status, content_type, total, seconds, parts, head)


async def timed_get(http: aiohttp.ClientSession, url: str | URL, accept: str = DICOM_JSON
                    ) -> tuple[int, float, bytes]:
    """GET ``url``; the time runs from sending the request until the whole body is read."""
    start = time.perf_counter()
    async with http.get(url, headers={"Accept": accept}) as resp:
        body = await resp.read()
        return resp.status, time.perf_counter() - start, body


# ----------------------------------------------------------------------------- repeated requests

RETRIEVE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


async def get_many(url: str, runs: int) -> list[tuple[int, float, bytes]]:
    """``runs`` timed GETs of ``url``, one after another on one connection."""
    async with session(1) as http:
        return [await timed_get(http, url) for _ in range(runs)]


async def retrieve_runs(url: str, runs: int) -> tuple[Download, list[Download]]:
    """A WADO-RS retrieve with its parts counted (the checked run), then ``runs`` timed ones."""
    async with session(1) as http:
        checked = await download(http, url, RETRIEVE_ACCEPT, count_parts=True)
        timed = [await download(http, url, RETRIEVE_ACCEPT) for _ in range(runs)]
    return checked, timed


def check_metadata(status: int, body: bytes, expected: int) -> str | None:
    """What is wrong with a /metadata answer of ``expected`` instances, or None."""
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    try:
        objs = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    if not isinstance(objs, list) or len(objs) != expected:
        return f"{len(objs) if isinstance(objs, list) else type(objs).__name__} objects, {expected} expected"
    if not all(isinstance(o, dict) and "00080018" in o for o in objs):
        return "some objects lack SOPInstanceUID (00080018)"
    return None
