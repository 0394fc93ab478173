"""WADO-RS Retrieve Frames (PS3.18 §10.4.1.1.3): ``GET .../instances/{instance}/frames/{frames}``.

Each requested frame is one part of a ``multipart/related`` response (PS3.18 §8.6.1.2), read
from the stored file by byte range: native frames are a slice of the pixel data value,
encapsulated ones the fragments of that frame (offsets indexed at ingest). Frames are served as
stored (uncompressed bytes as ``application/octet-stream``, compressed ones with their media
type, PS3.18 Table 8.7.3-5) unless the client asks for uncompressed frames of a compressed
instance: those are decoded in an executor. Nothing reads the whole file, except for the rare
Deflated Explicit VR Little Endian instances, whose offsets mean nothing.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from archive import keys
from archive.auth import visibility
from archive.dicomweb.media import parse_accept, uid_param
from archive.dicomweb.multipart import PART_END, MultipartWriter, new_boundary
from archive.index.reader import IndexReader, PixelSource
from archive.pixels import frames as px
from archive.pixels import transcode
from archive.pixels.codecpool import CodecPool
from archive.pixels.geometry import Geometry
from storage.base import BlobStore

log = logging.getLogger("archive.frames")


# -- content negotiation ---------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """How the frames go out: ``decode`` (compressed -> native) or as stored; the media type
    and transfer syntax of each part; multipart or a single-part body."""

    decode: bool
    media_type: str
    transfer_syntax: str
    multipart: bool

    @property
    def part_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def _stored_media(stored_ts: str, native: bool) -> tuple[str, str]:
    """Media type and transfer syntax of the frames as stored. Native frames are little endian
    whatever the file's syntax (PS3.18 §8.7.3.3.1), so they are Explicit VR Little Endian."""
    if native:
        return px.OCTET_STREAM, px.EXPLICIT_LE
    return px.MEDIA_TYPES.get(stored_ts, px.OCTET_STREAM), stored_ts


def _match(inner: str, ts: str | None, stored_ts: str, native: bool,
           can_decode: bool) -> tuple[bool, str, str] | None:
    """(decode, media type, transfer syntax) for one acceptable media type, or None."""
    media, served_ts = _stored_media(stored_ts, native)
    any_ts = ts in (None, "", "*")
    if native:
        if inner in ("*/*", "application/*", px.OCTET_STREAM) and (any_ts or ts == px.EXPLICIT_LE):
            return False, media, served_ts
        return None
    if ts == "*" or ts == stored_ts:
        # The client takes the stored syntax: the bytes go as they are, with the media type
        # Table 8.7.3-5 pairs with that syntax (what cornerstone/OHIF decode by).
        if inner in ("*/*", px.OCTET_STREAM, media) or (inner == "image/*" and media.startswith("image/")):
            return False, media, served_ts
        return None
    if ts is None or ts == "":
        if inner in ("*/*", media) or (inner == "image/*" and media.startswith("image/")):
            return False, media, served_ts
    wants_native = ts in (None, "", px.EXPLICIT_LE)
    if wants_native and inner in (px.OCTET_STREAM, "*/*", "application/*") and can_decode:
        return True, px.OCTET_STREAM, px.EXPLICIT_LE
    return None


def negotiate(accept: str | None, stored_ts: str, native: bool, can_decode: bool,
              single_frame: bool) -> Choice:
    """The representation of the frames (PS3.18 §8.7.3.3, §8.7.5), by the Accept header's
    media ranges in order of preference. ``multipart/related`` without ``type`` means
    application/octet-stream (the default of Table 8.7.3-4); a bare media type (single part,
    §8.6.1.1) is honoured only when one frame is asked for."""
    for mr in parse_accept(accept):
        if mr.type == "multipart/related":
            inner, multipart = mr.params.get("type", px.OCTET_STREAM).lower(), True
        elif mr.type in ("*/*", "multipart/*"):
            inner, multipart = "*/*", True
        elif single_frame:
            inner, multipart = mr.type, False
        else:
            continue
        inner = px.MEDIA_ALIASES.get(inner, inner)
        found = _match(inner, mr.params.get("transfer-syntax"), stored_ts, native, can_decode)
        if found is not None:
            return Choice(*found, multipart=multipart)
    media, ts = _stored_media(stored_ts, native)
    offer = f'multipart/related; type="{media}"; transfer-syntax={ts}'
    if not native and can_decode:
        offer += ' or multipart/related; type="application/octet-stream"'
    raise web.HTTPNotAcceptable(text=f"the frames of this instance are available as {offer}")


def _can_decode(ts: str, meta: dict[str, Any]) -> bool:
    """Whether compressed frames of ``ts`` can be decoded here: the transcoder's rule for going
    to Explicit VR Little Endian (a decoder for the syntax, a size that fits), decided from the
    metadata alone."""
    return transcode.check_conversion(ts, px.EXPLICIT_LE, meta) is None


# -- locating frames ---------------------------------------------------------------------------

@dataclass
class Located:
    """What serving frames of one stored file needs: the instance, its pixel data position, the
    pixel-related part of its metadata (groups 0028 and 7FE0: all the geometry and codecs use),
    and, once worked out, its frame -> fragments map."""

    src: PixelSource
    geometry: Geometry
    spans: px.FrameSpans | None = None


# Located instances by storage key. A key is unique per write (ingest never replaces a blob in
# place), so an entry can never be stale. A viewer fetches every frame of an instance one
# request at a time: this spares each request the metadata parse (large for enhanced
# multi-frame instances) and the frame map (which may take reading the file).
# Sized for a few long series: a viewer scrolling a 1,000-slice CT cycles through 1,000 entries,
# and with 512 entries every request missed (a repeated pass over a 1,000-slice series: 350
# frames/s against 630/s). A slice's entry is 4-9 kB; one of a multi-frame or tiled instance
# grows with its fragments, so the fragments held are bounded too (about 100 bytes each).
_LOCATED: OrderedDict[str, Located] = OrderedDict()
_LOCATED_MAX = 4096
_FRAGMENTS_MAX = 200_000
_located_fragments = 0


def _fragments(located: Located) -> int:
    return len((located.src.pixel or {}).get("fragments") or ())


def _remember(key: str, located: Located) -> None:
    global _located_fragments
    _LOCATED[key] = located
    _located_fragments += _fragments(located)
    while len(_LOCATED) > 1 and (len(_LOCATED) > _LOCATED_MAX or _located_fragments > _FRAGMENTS_MAX):
        _, old = _LOCATED.popitem(last=False)
        _located_fragments -= _fragments(old)


def _pixel_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k.startswith(("0028", "7FE0"))}


async def _locate(request: web.Request) -> Located:
    """The instance of the request, from the cache when its stored file was seen before."""
    study = uid_param(request, "study")
    series = uid_param(request, "series")
    sop = uid_param(request, "instance")
    reader: IndexReader = request.app[keys.READER]
    found = await reader.frame_source(study, series, sop, visibility(request))
    if found is None:
        raise web.HTTPNotFound(text="no such instance")
    located = _LOCATED.get(found.instance.storage_key)
    if located is not None:
        _LOCATED.move_to_end(found.instance.storage_key)
        return located
    src = await reader.frame_pixels(found)
    src = PixelSource(src.instance, src.pixel, _pixel_meta(src.meta))
    located = Located(src, Geometry.from_json(src.meta))
    _remember(src.instance.storage_key, located)
    return located


async def _extended_offsets(request: web.Request, src: PixelSource, store: BlobStore) -> list[int] | None:
    """Extended Offset Table values (PS3.3 C.7.6.3.1.8), inline in the metadata or bulk."""
    elem = src.meta.get("7FE00001")
    if not elem:
        return None
    if "InlineBinary" in elem:
        return px.unpack_offsets(base64.b64decode(elem["InlineBinary"]))
    inst = src.instance
    reader: IndexReader = request.app[keys.READER]
    found = await reader.bulk(inst.study_uid, inst.series_uid, inst.sop_uid, "7FE00001",
                              visibility(request))
    if found is None or found[1][0] is None:
        return None
    offset, length = found[1]
    assert offset is not None and length is not None
    data = b"".join([c async for c in store.open_range(inst.storage_key, offset, offset + length)])
    return px.unpack_offsets(data)


async def _frame_spans(request: web.Request, located: Located, store: BlobStore) -> px.FrameSpans:
    if located.spans is not None:
        return located.spans
    src, geometry = located.src, located.geometry
    pixel, inst = src.pixel, src.instance
    assert pixel is not None
    fragments = pixel["fragments"]
    eot = await _extended_offsets(request, src, store) if "7FE00001" in src.meta else None
    spans = px.frame_spans(fragments, pixel["basic_offsets"], geometry.number_of_frames, eot)
    if spans is None and fragments:
        # No offset table and several fragments per frame: look at the fragments themselves.
        loop = asyncio.get_running_loop()
        heads, tails = await loop.run_in_executor(
            None, lambda: px.read_fragment_marks(store.open_sync(inst.storage_key), fragments))
        spans = px.spans_from_marks(heads, tails, inst.transfer_syntax_uid, geometry.number_of_frames)
    if spans is None:
        raise web.HTTPNotFound(text=f"the frames of this instance cannot be located: no offset table "
                                    f"and {len(fragments)} fragments for {geometry.number_of_frames} frames")
    located.spans = spans
    return spans


# -- reading frames ----------------------------------------------------------------------------


class DecodeError(Exception):
    """A stored frame the codec could not decode."""


@dataclass
class Part:
    """One frame to send: ``size`` when known before reading it, and how to produce it."""

    size: int | None
    chunks: Callable[[], AsyncGenerator[bytes, None]]


async def _read_all(store: BlobStore, key: str, ranges: list[tuple[int, int]]) -> bytes:
    return b"".join([await store.read_range(key, start, end) for start, end in ranges])


# Frames up to this size are read in one call; larger ones (e.g. 4k x 4k colour) are streamed.
_ONE_READ = 8 << 20


def _native_parts(store: BlobStore, src: PixelSource, geometry: Geometry,
                  indexes: list[int]) -> list[Part]:
    """Native frames: each a byte range of the pixel data value; big-endian words and 1-bit
    frames that start mid-byte are fixed in an executor (PS3.5 §8.1.1, PS3.18 §8.7.3.3.1)."""
    pixel = src.pixel
    assert pixel is not None
    key, base = src.instance.storage_key, int(pixel["offset"])
    big_endian = src.instance.transfer_syntax_uid == px.BIG_ENDIAN
    parts = []
    for index in indexes:
        s = px.native_slice(geometry, int(pixel["length"]), pixel["vr"], index, big_endian)

        async def chunks(s: px.NativeSlice = s) -> AsyncGenerator[bytes, None]:
            if s.plain and s.end - s.start <= _ONE_READ:
                yield await store.read_range(key, base + s.start, base + s.end)
                return
            if s.plain:
                async for chunk in store.open_range(key, base + s.start, base + s.end):
                    yield chunk
                return
            data = await _read_all(store, key, [(base + s.start, base + s.end)])
            yield await asyncio.get_running_loop().run_in_executor(None, px.native_frame, data, s)

        parts.append(Part(s.out_length, chunks))
    return parts


def _fragment_ranges(src: PixelSource, span: tuple[int, int]) -> list[tuple[int, int]]:
    assert src.pixel is not None
    return [(int(o), int(o) + int(n)) for o, n in src.pixel["fragments"][span[0]:span[1]]]


def _encapsulated_parts(store: BlobStore, codecs: CodecPool, src: PixelSource, geometry: Geometry,
                        spans: px.FrameSpans, indexes: list[int], choice: Choice) -> list[Part]:
    """Encapsulated frames: the frame's fragments without item headers (PS3.18 §8.7.3.3.2),
    sent as they are, decoded to native bytes in an executor, or, for Encapsulated
    Uncompressed (PS3.5 A.4.11), cut to the frame's length (fragments are padded to even)."""
    inst = src.instance
    key = inst.storage_key
    uncompressed = inst.transfer_syntax_uid == px.ENCAPSULATED_UNCOMPRESSED
    pixel_meta = _pixel_meta(src.meta)  # what a codec reads, and all a worker process is sent
    frame_length = (px.frame_bits(geometry) + 7) // 8
    parts = []
    for index in indexes:
        if index >= len(spans):
            raise web.HTTPNotFound(text=f"frame {index + 1} is not in the stored pixel data "
                                        f"({len(spans)} frames found)")
        ranges = _fragment_ranges(src, spans[index])
        if uncompressed:
            async def cut(ranges: list[tuple[int, int]] = ranges) -> AsyncGenerator[bytes, None]:
                data = await _read_all(store, key, ranges)
                yield data[:frame_length].ljust(frame_length, b"\0")

            parts.append(Part(frame_length, cut))
        elif choice.decode:
            async def decoded(ranges: list[tuple[int, int]] = ranges,
                              index: int = index) -> AsyncGenerator[bytes, None]:
                data = await _read_all(store, key, ranges)
                try:
                    yield await codecs.run(transcode.decode_frame, data, pixel_meta,
                                           inst.transfer_syntax_uid, index)
                except Exception as exc:  # codecs raise many types on damaged data
                    raise DecodeError(f"frame {index + 1} cannot be decoded ({type(exc).__name__}: "
                                      f"{exc}"[:300] + "); transfer-syntax=* gets it as stored") from exc

            parts.append(Part(None, decoded))
        else:
            async def stored(ranges: list[tuple[int, int]] = ranges) -> AsyncGenerator[bytes, None]:
                if sum(end - start for start, end in ranges) <= _ONE_READ:
                    yield await _read_all(store, key, ranges)
                    return
                for start, end in ranges:
                    async for chunk in store.open_range(key, start, end):
                        yield chunk

            parts.append(Part(sum(e - s for s, e in ranges), stored))
    return parts


def _deflated_parts(store: BlobStore, src: PixelSource, geometry: Geometry,
                    indexes: list[int]) -> list[Part]:
    """Frames of a deflated file: inflated and parsed whole once, in an executor."""
    loaded: asyncio.Future[list[bytes]] | None = None
    frame_length = (px.frame_bits(geometry) + 7) // 8

    def load() -> asyncio.Future[list[bytes]]:
        nonlocal loaded
        if loaded is None:
            loaded = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(
                None, lambda: px.deflated_frames(store.open_sync(src.instance.storage_key),
                                                 geometry, indexes)))
        return loaded

    parts = []
    for n in range(len(indexes)):
        async def chunks(n: int = n) -> AsyncGenerator[bytes, None]:
            try:
                frames = await load()
            except (ValueError, EOFError, KeyError) as exc:  # pydicom on a damaged data set
                raise DecodeError(f"the deflated data set cannot be read: {exc}"[:300]) from exc
            yield frames[n]

        parts.append(Part(frame_length, chunks))
    return parts


# -- the handler -------------------------------------------------------------------------------


def _frame_numbers(request: web.Request, geometry: Geometry) -> list[int]:
    try:
        return px.parse_frame_list(request.match_info["frames"], geometry.number_of_frames)
    except px.FrameListError as exc:
        if exc.status == 404:
            raise web.HTTPNotFound(text=str(exc)) from None
        raise web.HTTPBadRequest(text=str(exc)) from None


async def frames(request: web.Request) -> web.StreamResponse:
    """GET .../instances/{instance}/frames/{frames} (PS3.18 §10.4.1.1.3)."""
    located = await _locate(request)
    src, geometry = located.src, located.geometry
    ts = src.instance.transfer_syntax_uid
    deflated = src.pixel is None and ts == px.DEFLATED and px.pixel_tag_in(src.meta) is not None
    if (src.pixel is None and not deflated) or geometry.rows <= 0 or geometry.columns <= 0:
        raise web.HTTPNotFound(text="this instance has no pixel data: it has no frames")
    numbers = _frame_numbers(request, geometry)
    indexes = [n - 1 for n in numbers]
    encapsulated = bool(src.pixel and src.pixel["encapsulated"])
    native = not encapsulated or ts == px.ENCAPSULATED_UNCOMPRESSED
    choice = negotiate(request.headers.get("Accept"), ts, native,
                       can_decode=not native and _can_decode(ts, src.meta), single_frame=len(indexes) == 1)
    store: BlobStore = request.app[keys.STORE]
    if deflated:
        parts = _deflated_parts(store, src, geometry, indexes)
    elif not encapsulated:
        parts = _native_parts(store, src, geometry, indexes)
    else:
        spans = await _frame_spans(request, located, store)
        parts = _encapsulated_parts(store, request.app[keys.CODECS], src, geometry, spans, indexes, choice)
    if choice.multipart:
        return await _send_multipart(request, choice, parts)
    return await _send_single(request, choice, parts[0])


async def _send_single(request: web.Request, choice: Choice, part: Part) -> web.StreamResponse:
    """One frame as a single-part body (PS3.18 §8.6.1.1), when the client asked for that."""
    first, rest = await _first_chunk(part)
    try:
        response = web.StreamResponse(headers={"Content-Type": choice.part_type})
        if part.size is not None:
            response.content_length = part.size
        await response.prepare(request)
        await response.write(first)
        async for chunk in rest:
            await response.write(chunk)
    finally:
        await rest.aclose()  # a client gone mid-frame: close the file now, not at GC
    await response.write_eof()
    return response


async def _first_chunk(part: Part) -> tuple[bytes, AsyncGenerator[bytes, None]]:
    """The first bytes of the first frame, got before the response starts, so that a frame that
    cannot be decoded is still answered with a clear status rather than a broken response."""
    chunks = part.chunks()
    try:
        return await anext(chunks, b""), chunks
    except DecodeError as exc:
        raise web.HTTPNotAcceptable(text=str(exc)) from None


async def _send_multipart(request: web.Request, choice: Choice, parts: list[Part]) -> web.StreamResponse:
    """Frames as parts of multipart/related, in the order asked (PS3.18 §8.6.1.2). When every
    size is known up front the response has a Content-Length (a client can show progress)."""
    boundary = new_boundary()
    response = web.StreamResponse(headers={"Content-Type": MultipartWriter.content_type(
        boundary, choice.media_type, choice.transfer_syntax)})
    heads = [MultipartWriter.part_head(boundary, {"Content-Type": choice.part_type, **(
        {"Content-Length": str(p.size)} if p.size is not None else {})}) for p in parts]
    closing = MultipartWriter.closing(boundary)
    if len(parts) == 1 and (parts[0].size is None or parts[0].size <= _ONE_READ):
        # One frame (what viewers ask for, thousands of times a series): already in memory
        # after one read or one decode, so it goes out with the headers in a single write.
        first, chunks = await _first_chunk(parts[0])
        try:
            body = b"".join([heads[0], first] + [c async for c in chunks] + [PART_END, closing])
        finally:
            await chunks.aclose()
        response = web.Response(body=body, headers={"Content-Type": response.headers["Content-Type"]})
        return response
    if all(p.size is not None for p in parts):
        response.content_length = (sum(len(h) + (p.size or 0) + len(PART_END)
                                       for h, p in zip(heads, parts, strict=True)) + len(closing))
    first, chunks = await _first_chunk(parts[0])
    try:
        await response.prepare(request)
        for i, (head, part) in enumerate(zip(heads, parts, strict=True)):
            await response.write(head)
            if i == 0:
                await response.write(first)
            else:
                chunks = part.chunks()
            async for chunk in chunks:
                await response.write(chunk)
            await response.write(PART_END)
        await response.write(closing)
    except (OSError, DecodeError) as exc:
        # A stored file shorter than indexed, or gone, or a frame that cannot be decoded once
        # the response has started: break the response rather than lie.
        log.error("frames of %s aborted: %s", request.match_info.get("instance"), exc)
        raise
    finally:
        await chunks.aclose()  # a client gone mid-frame: close the file now, not at GC
    await response.write_eof()
    return response
