"""WADO-RS rendered resources and thumbnails (PS3.18 §10.4.1.1.4 Rendered Resources, §10.4.1.1.5
Thumbnail Resources; query parameters §8.3.5.1; media types §8.7.4; accept parameter §8.3.3.1).

``…/rendered`` at study, series, instance and frames level, ``…/thumbnail`` at the same levels.
What is rendered, and how a representative image is chosen, is in docs/conformance.md
("Rendered and thumbnails"). The handlers parse the request, pick instances and frames from the
index and hand the imaging to :mod:`archive.pixels.render`, in an executor.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from aiohttp import web

from archive import keys
from archive.auth import visibility
from archive.dicomweb.media import MediaRange, parse_accept, uid_param
from archive.dicomweb.multipart import MultipartWriter, new_boundary
from archive.index.reader import IndexReader, StoredInstance
from archive.pixels import render
from archive.pixels.cache import ThumbnailCache
from archive.pixels.render import GIF, JPEG, MEDIA_TYPES, RenderError, RenderParams, Viewport, Window
from storage.base import BlobStore

log = logging.getLogger("archive.rendered")

# Octet-stream ranges get a JPEG: dicomweb-client's retrieveBulkData (OHIF's "thumbnail" and
# "rendered" thumbnails) asks for multipart/related; type="application/octet-stream".
_LENIENT = ("application/octet-stream", "application/*")
_WINDOW_FUNCTIONS = {"linear": render.LINEAR, "linear-exact": render.LINEAR_EXACT,
                     "sigmoid": render.SIGMOID}
MAX_VIEWPORT = 8192
# A representative image that cannot be rendered is replaced by the next candidate, this often.
_CANDIDATES = 3
_CACHE_VERSION = 1  # bump when rendering changes, so that cached thumbnails are rendered again
# Instances of a remote store up to this size are read whole and handed to a codec worker process.
_HANDED_OVER = 32 << 20


@dataclass(frozen=True)
class Choice:
    """The negotiated response: the image media type, and whether the client asked for
    multipart/related (True), a single image (False) or accepts either (None, ``*/*``)."""

    media_type: str
    multipart: bool | None


# -- request parsing ---------------------------------------------------------------------------------


def _range_choice(mr: MediaRange) -> Choice | None:
    if mr.type in MEDIA_TYPES:
        return Choice(mr.type, False)
    if mr.type == "image/*":
        return Choice(JPEG, False)
    if mr.type == "*/*":
        return Choice(JPEG, None)
    if mr.type in ("multipart/related", "multipart/*"):
        part = mr.params.get("type", JPEG).lower()
        if part in MEDIA_TYPES:
            return Choice(part, True)
        if part in ("image/*", "*/*"):
            return Choice(JPEG, True)
        return Choice(JPEG, False) if part in _LENIENT else None
    return Choice(JPEG, False) if mr.type in _LENIENT else None


def negotiate(request: web.Request) -> Choice:
    """The ``accept`` query parameter, else the Accept header (PS3.18 §8.3.3.1: the parameter
    wins); the first range, in preference order, that names a rendered media type."""
    values = request.query.getall("accept", [])
    source = ",".join(values) if values else request.headers.get("Accept")
    for mr in parse_accept(source):
        choice = _range_choice(mr)
        if choice is not None:
            return choice
    raise web.HTTPNotAcceptable(
        text="rendered resources are image/jpeg, image/png or image/gif, or multipart/related of "
             "one of them (accept query parameter or Accept header)")


def _one(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise web.HTTPBadRequest(text=f"{name}: given more than once")
    return values[0] if values else None


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name}: {text[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise web.HTTPBadRequest(text=f"{name}: {text[:40]!r} is not a finite number")
    return value


def parse_window(text: str) -> Window:
    """``window=center,width[,function]`` (PS3.18 §8.3.5.1.4), function ``linear`` (default),
    ``linear-exact`` or ``sigmoid`` (PS3.3 C.11.2.1.3)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise web.HTTPBadRequest(text="window: expected center,width[,function]")
    center = _number(parts[0], "window center")
    width = _number(parts[1], "window width")
    name = parts[2].lower() if len(parts) == 3 and parts[2] else "linear"
    function = _WINDOW_FUNCTIONS.get(name)
    if function is None:
        raise web.HTTPBadRequest(text="window: function must be linear, linear-exact or sigmoid")
    if function == render.LINEAR and width < 1:
        raise web.HTTPBadRequest(text="window: width must be at least 1 for linear")
    if width <= 0:
        raise web.HTTPBadRequest(text="window: width must be greater than 0")
    return Window(center, width, function)


def parse_viewport(text: str) -> Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 §8.3.5.1.3); empty sx..sh take their defaults."""
    parts = [p.strip() for p in text.split(",")]
    if not 2 <= len(parts) <= 6:
        raise web.HTTPBadRequest(text="viewport: expected vw,vh[,sx,sy,sw,sh]")
    size = []
    for name, part in zip(("vw", "vh"), parts[:2], strict=False):
        if not part.isdigit() or not 1 <= int(part) <= MAX_VIEWPORT:
            raise web.HTTPBadRequest(
                text=f"viewport: {name} must be a whole number from 1 to {MAX_VIEWPORT}")
        size.append(int(part))
    region: list[float | None] = [None] * 4
    for i, (name, part) in enumerate(zip(("sx", "sy", "sw", "sh"), parts[2:], strict=False)):
        if part:
            region[i] = _number(part, f"viewport {name}")
    sx, sy, sw, sh = region
    if (sx is not None and sx < 0) or (sy is not None and sy < 0):
        raise web.HTTPBadRequest(text="viewport: sx and sy must not be negative")
    if sw == 0 or sh == 0:
        raise web.HTTPBadRequest(text="viewport: sw and sh must not be 0")
    return Viewport(size[0], size[1], sx or 0.0, sy or 0.0, sw, sh)


def parse_quality(text: str) -> int:
    """``quality=1..100`` (PS3.18 §8.3.5.1.2), used for JPEG."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 100:
        raise web.HTTPBadRequest(text="quality: must be a whole number from 1 to 100")
    return int(text)


def render_params(request: web.Request, media_type: str, fit: int | None = None) -> RenderParams:
    """The rendering query parameters. ``annotation``, ``charset`` and ``iccprofile`` (and any
    parameter this server does not know) are ignored, as PS3.18 §8.3.5.1 allows."""
    window = _one(request, "window")
    viewport = _one(request, "viewport")
    quality = _one(request, "quality")
    return RenderParams(
        media_type=media_type,
        quality=parse_quality(quality) if quality is not None
        else request.app[keys.CONFIG].render.jpeg_quality,
        window=parse_window(window) if window is not None else None,
        viewport=parse_viewport(viewport) if viewport is not None else None,
        fit=fit)


def _scope(request: web.Request) -> tuple[str, str | None, str | None]:
    study = uid_param(request, "study")
    series = uid_param(request, "series") if "series" in request.match_info else None
    sop = uid_param(request, "instance") if "instance" in request.match_info else None
    return study, series, sop


def parse_frames(text: str, frames: int) -> list[int]:
    """``1,3,5`` -> 0-based indexes; 400 when malformed, 404 beyond the instance's frames."""
    numbers = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise web.HTTPBadRequest(text=f"frames: {part[:20]!r} is not a frame number (1, 2, ...)")
        numbers.append(int(part))
    beyond = [n for n in numbers if n > frames]
    if beyond:
        raise web.HTTPNotFound(text=f"frame {beyond[0]} does not exist: the instance has "
                                    f"{frames} frame(s)")
    return [n - 1 for n in numbers]


# -- choosing instances and frames -----------------------------------------------------------------

Rows = list[tuple[StoredInstance, int, int]]  # (instance, Rows, Number of Frames)


def middle(count: int) -> int:
    """The representative position of ``count``: the middle one, the first of the two middle
    ones when even (2 frames -> the first)."""
    return (count - 1) // 2


def representatives(rows: Rows, study_level: bool) -> list[tuple[StoredInstance, int]]:
    """Candidate (instance, frame index) pairs for one image of a series or study, best first:
    the middle frame of the middle image instance of the series; for a study, of each of its
    series with an image instance, in series order."""
    by_series: dict[str, list[tuple[StoredInstance, int]]] = {}
    for inst, n_rows, frames in rows:
        if n_rows > 0:
            by_series.setdefault(inst.series_uid, []).append((inst, frames))
    groups = list(by_series.values()) if study_level else [
        [item for group in by_series.values() for item in group]]
    out = []
    for group in groups:
        if group:
            inst, frames = group[middle(len(group))]
            out.append((inst, middle(frames)))
    return out


def _image(rows: Rows, sop: str) -> tuple[StoredInstance, int]:
    inst, n_rows, frames = rows[0]
    if n_rows <= 0:
        raise web.HTTPNotFound(text=f"instance {sop} has no pixel data to render")
    return inst, frames


# -- rendering in the executor -----------------------------------------------------------------------


class FrameStream:
    """Rendered frames of one stored instance, produced one at a time in the default executor
    (the file is opened, read and decoded off the event loop)."""

    def __init__(self, request: web.Request, inst: StoredInstance, indices: list[int],
                 params: RenderParams) -> None:
        self.store = request.app[keys.STORE]
        self.inst = inst
        self.indices = indices
        self.params = params
        self.loop = asyncio.get_running_loop()
        self._fobj: BinaryIO | None = None
        self._frames: Iterator[bytes] | None = None

    async def next(self) -> bytes | None:
        if self._frames is None:
            self._fobj = await self.loop.run_in_executor(None, self.store.open_sync,
                                                         self.inst.storage_key)
            self._frames = render.render_frames(self._fobj, self.inst.transfer_syntax_uid,
                                                self.indices, self.params)
        return await self.loop.run_in_executor(None, next, self._frames, None)

    async def close(self) -> None:
        frames, fobj = self._frames, self._fobj
        self._frames = self._fobj = None
        if fobj is not None:
            await self.loop.run_in_executor(None, _close, frames, fobj)


def _close(frames: object, fobj: BinaryIO) -> None:
    close = getattr(frames, "close", None)
    if close is not None:
        close()
    fobj.close()


async def render_one(request: web.Request, inst: StoredInstance, index: int,
                     params: RenderParams) -> bytes:
    """One frame of one instance, encoded (RenderError when it cannot be rendered). With codec
    worker processes and a store with local files, the whole of it (read, decode, window,
    encode) runs in a worker: decoding and JPEG encoding would otherwise share one core.
    Without workers the same call runs in a thread, so both modes render with one function."""
    codecs = request.app[keys.CODECS]
    store = request.app[keys.STORE]
    path = store.local_path(inst.storage_key)
    if path is not None:
        data = await codecs.run(render.render_file_frame, path, inst.transfer_syntax_uid, index, params)
    elif codecs.processes > 0 and inst.size <= _HANDED_OVER:
        # A remote store (S3): the worker gets the bytes, read here in one GET, not a path.
        blob = await store.read_range(inst.storage_key, 0, inst.size)
        data = await codecs.run(render.render_bytes_frame, blob, inst.transfer_syntax_uid, index, params)
    else:
        # Threads only, or a large instance of a remote store: rendered in a thread that reads
        # the header and this frame only (open_sync's ranged reads).
        stream = FrameStream(request, inst, [index], params)
        try:
            data = await stream.next()
        finally:
            await stream.close()
    if data is None:
        raise RenderError("the frame could not be read", "undecodable")
    return data


def _animate(store: BlobStore, inst: StoredInstance, indices: list[int],
             params: RenderParams) -> bytes:
    fobj = store.open_sync(inst.storage_key)
    try:
        return render.render_animation(fobj, inst.transfer_syntax_uid, indices, params)
    finally:
        fobj.close()


def http_error(exc: RenderError, inst: StoredInstance | None = None) -> web.HTTPException:
    """no-pixels -> 404, bad-request -> 400, undecodable -> 406 (no acceptable rendering of
    this resource can be produced)."""
    what = f"instance {inst.sop_uid}: " if inst is not None and exc.kind != "bad-request" else ""
    text = what + str(exc)
    if exc.kind == "no-pixels":
        return web.HTTPNotFound(text=text)
    if exc.kind == "bad-request":
        return web.HTTPBadRequest(text=text)
    return web.HTTPNotAcceptable(text=text)


def _image_response(data: bytes, media_type: str) -> web.Response:
    return web.Response(body=data, content_type=media_type)


async def _first_rendered(request: web.Request, candidates: list[tuple[StoredInstance, int]],
                          params: RenderParams) -> bytes:
    error: tuple[RenderError, StoredInstance] | None = None
    for inst, index in candidates[:_CANDIDATES]:
        try:
            return await render_one(request, inst, index, params)
        except RenderError as exc:
            if exc.kind == "bad-request":
                raise http_error(exc) from exc
            log.info("representative %s not rendered: %s", inst.sop_uid, exc)
            error = (exc, inst)
    if error is None:
        raise web.HTTPNotFound(text="no instance with pixel data to render")
    raise http_error(*error)


async def _multipart(request: web.Request, jobs: list[tuple[StoredInstance, list[int]]],
                     params: RenderParams) -> web.StreamResponse:
    """One part per rendered frame, rendered one at a time as the response is written. An
    instance that cannot be rendered is left out (logged); if none can, the error is the
    response."""
    boundary = new_boundary()
    response: web.StreamResponse | None = None
    writer: MultipartWriter | None = None
    error: tuple[RenderError, StoredInstance] | None = None
    headers = {"Content-Type": params.media_type}
    for inst, indices in jobs:
        stream = FrameStream(request, inst, indices, params)
        try:
            while (data := await stream.next()) is not None:
                if writer is None:
                    response = web.StreamResponse(headers={
                        "Content-Type": MultipartWriter.content_type(boundary, params.media_type)})
                    await response.prepare(request)
                    writer = MultipartWriter(response, boundary)
                await writer.begin_part({**headers, "Content-Length": str(len(data))})
                await response.write(data)  # type: ignore[union-attr]
                await writer.end_part()
        except RenderError as exc:
            if exc.kind == "bad-request":
                if writer is None:
                    raise http_error(exc) from exc
            log.info("rendered: %s left out: %s", inst.sop_uid, exc)
            error = (exc, inst)
        finally:
            await stream.close()
    if writer is None or response is None:
        if error is not None:
            raise http_error(*error)
        raise web.HTTPNotFound(text="no instance with pixel data to render")
    await writer.close()
    await response.write_eof()
    return response


# -- handlers --------------------------------------------------------------------------------------


async def rendered(request: web.Request) -> web.StreamResponse:
    """GET {study}[/series/{series}[/instances/{instance}[/frames/{frames}]]]/rendered"""
    study, series, sop = _scope(request)
    choice = negotiate(request)
    params = render_params(request, choice.media_type)
    reader: IndexReader = request.app[keys.READER]
    rows = await reader.image_rows(study, series, sop, visibility(request))
    if not rows:
        raise web.HTTPNotFound(text="no such study, series or instance")
    if sop is None:
        return await _rendered_study_series(request, rows, choice, params, series is None)
    inst, frames = _image(rows, sop)
    if "frames" in request.match_info:
        indices = parse_frames(request.match_info["frames"], frames)
    else:
        # Instance: multipart of every frame, an animated GIF of them, or else the first frame.
        indices = list(range(frames)) if choice.multipart or choice.media_type == GIF else [0]
    if choice.multipart:
        return await _multipart(request, [(inst, indices)], params)
    if len(indices) > 1:
        if choice.media_type == GIF:
            try:
                data = await asyncio.get_running_loop().run_in_executor(
                    None, _animate, request.app[keys.STORE], inst, indices, params)
            except RenderError as exc:
                raise http_error(exc, inst) from exc
            return _image_response(data, GIF)
        if choice.multipart is None:
            return await _multipart(request, [(inst, indices)], params)
        raise web.HTTPNotAcceptable(
            text=f"{len(indices)} frames are not one {choice.media_type}: ask for "
                 f'multipart/related; type="{choice.media_type}" or image/gif')
    try:
        data = await render_one(request, inst, indices[0], params)
    except RenderError as exc:
        raise http_error(exc, inst) from exc
    return _image_response(data, choice.media_type)


async def _rendered_study_series(request: web.Request, rows: Rows, choice: Choice,
                                 params: RenderParams, study_level: bool) -> web.StreamResponse:
    """Multipart: the first frame of each image instance (PS3.18: the rendered instances).
    A single image: the representative one, as for thumbnails but full size."""
    if choice.multipart:
        jobs = [(inst, [0]) for inst, n_rows, _ in rows if n_rows > 0]
        if not jobs:
            raise web.HTTPNotFound(text="no instance with pixel data to render")
        return await _multipart(request, jobs, params)
    data = await _first_rendered(request, representatives(rows, study_level), params)
    return _image_response(data, choice.media_type)


async def thumbnail(request: web.Request) -> web.StreamResponse:
    """GET {study}[/series/{series}[/instances/{instance}[/frames/{frames}]]]/thumbnail

    A single image (PS3.18 §10.4.1.1.5): multipart ranges get their part's media type."""
    study, series, sop = _scope(request)
    choice = negotiate(request)
    cfg = request.app[keys.CONFIG]
    params = render_params(request, choice.media_type, fit=cfg.render.thumbnail_size)
    reader: IndexReader = request.app[keys.READER]
    rows = await reader.image_rows(study, series, sop, visibility(request))
    if not rows:
        raise web.HTTPNotFound(text="no such study, series or instance")
    if sop is None:
        candidates = representatives(rows, series is None)
    else:
        inst, frames = _image(rows, sop)
        if "frames" in request.match_info:
            index = parse_frames(request.match_info["frames"], frames)[0]
        else:
            index = middle(frames)
        candidates = [(inst, index)]
    cache = ThumbnailCache(cfg.thumbnail_cache_path) if cfg.render.thumbnail_cache else None
    loop = asyncio.get_running_loop()
    error: tuple[RenderError, StoredInstance] | None = None
    for inst, index in candidates[:_CANDIDATES]:
        key = ThumbnailCache.key(_CACHE_VERSION, inst.storage_key, inst.size, index, params)
        if cache is not None:
            cached = await loop.run_in_executor(None, cache.get, key)
            if cached is not None:
                return _image_response(cached, params.media_type)
        try:
            data = await render_one(request, inst, index, params)
        except RenderError as exc:
            if exc.kind == "bad-request":
                raise http_error(exc) from exc
            log.info("thumbnail of %s not rendered: %s", inst.sop_uid, exc)
            error = (exc, inst)
            continue
        if cache is not None:
            await loop.run_in_executor(None, cache.put, key, data)
        return _image_response(data, params.media_type)
    if error is not None:
        raise http_error(*error)
    raise web.HTTPNotFound(text="no instance with pixel data to render")
