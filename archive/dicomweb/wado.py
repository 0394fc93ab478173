"""WADO-RS: Retrieve Transaction (PS3.18 §10.4): instances, metadata and bulk data.

Instances are streamed from storage into a ``multipart/related`` response; metadata is the DICOM
JSON stored at ingest, concatenated, never rebuilt from files.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, BinaryIO

from aiohttp import web
from pydicom import dcmread

from archive import keys
from archive.dicom.jsonmodel import BASE_URL_TOKEN
from archive.dicomweb.media import base_url, parse_accept, uid_param
from archive.dicomweb.multipart import PART_END, MultipartWriter, new_boundary
from archive.index.reader import IndexReader, StoredInstance
from storage.base import BlobStore

log = logging.getLogger("archive.wado")

_DICOM_OK = ("application/dicom", "*/*", "application/*", "multipart/*")


def _negotiate_dicom(request: web.Request) -> set[str] | None:
    """The transfer syntaxes the client accepts (None: any, so as stored), or 406 if no acceptable
    media type. Every acceptable range counts: nothing is transcoded, so the stored transfer
    syntax is served when any range allows it."""
    wanted: set[str] = set()
    for mr in parse_accept(request.headers.get("Accept")):
        if mr.type == "multipart/related":
            if mr.params.get("type", "application/dicom").lower() != "application/dicom":
                continue
        elif mr.type not in _DICOM_OK:
            continue
        ts = mr.params.get("transfer-syntax")
        if ts in (None, "", "*"):
            return None
        wanted.add(ts)
    if wanted:
        return wanted
    raise web.HTTPNotAcceptable(
        text='retrieve offers multipart/related; type="application/dicom" (transfer-syntax=* or '
             "the stored one)")


def _scope(request: web.Request) -> tuple[str, str | None, str | None]:
    study = uid_param(request, "study")
    series = uid_param(request, "series") if "series" in request.match_info else None
    sop = uid_param(request, "instance") if "instance" in request.match_info else None
    return study, series, sop


async def retrieve(request: web.Request) -> web.StreamResponse:
    """GET /studies/{study}[/series/{series}[/instances/{instance}]]"""
    study, series, sop = _scope(request)
    accepted_ts = _negotiate_dicom(request)
    reader: IndexReader = request.app[keys.READER]
    found = await reader.instances(study, series, sop)
    if not found:
        raise web.HTTPNotFound(text="no such study, series or instance")
    if accepted_ts is not None:
        stored = {i.transfer_syntax_uid for i in found}
        if not stored <= accepted_ts:
            raise web.HTTPNotAcceptable(
                text=f"transfer syntax {', '.join(sorted(accepted_ts))} is not available; stored as "
                     f"{', '.join(sorted(stored))} (use transfer-syntax=*)")
    return await _stream_instances(request, found)


async def _send_blob(request: web.Request, response: web.StreamResponse, store: BlobStore,
                     inst: StoredInstance, fobj: BinaryIO | None) -> None:
    """One stored file into the response: sendfile(2) when the store gave a local file, else a
    chunked copy. Either way nothing of it is held in memory."""
    if fobj is None:
        async for chunk in store.open_range(inst.storage_key):
            await response.write(chunk)
        return
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    sent = await asyncio.get_running_loop().sendfile(transport, fobj, 0, inst.size)
    if sent != inst.size:
        raise OSError(f"stored file of {inst.sop_uid} is shorter than indexed")


# Instances smaller than this go in batches read by one executor call and written at once
# (up to _BATCH_BYTES): per-file sendfile calls cost more than the copy for typical slices.
_SMALL = 2 << 20
_BATCH_BYTES = 4 << 20


async def _filled(reading: asyncio.Future[None], view: memoryview) -> memoryview:
    await reading
    return view


def _batches(found: list[StoredInstance]) -> list[list[int]]:
    """Indexes of ``found`` grouped for sending: runs of small instances, large ones alone."""
    groups: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, inst in enumerate(found):
        if inst.size >= _SMALL:
            if current:
                groups.append(current)
                current, size = [], 0
            groups.append([i])
            continue
        if current and size + inst.size > _BATCH_BYTES:
            groups.append(current)
            current, size = [], 0
        current.append(i)
        size += inst.size
    if current:
        groups.append(current)
    return groups


async def _stream_instances(request: web.Request, found: list[StoredInstance]) -> web.StreamResponse:
    """Instances as multipart/related parts. The total length is known from the index, so the
    response has a Content-Length (clients can show progress). Large files go by sendfile;
    small ones in batches of a few MB, the next batch read while the current one is sent, so
    memory stays bounded (two batches) whatever the series size."""
    store: BlobStore = request.app[keys.STORE]
    boundary = new_boundary()
    heads = [MultipartWriter.part_head(boundary, {
        "Content-Type": f"application/dicom; transfer-syntax={inst.transfer_syntax_uid}",
        "Content-Length": str(inst.size)}) for inst in found]
    closing = MultipartWriter.closing(boundary)
    response = web.StreamResponse(headers={
        "Content-Type": MultipartWriter.content_type(boundary, "application/dicom")})
    response.content_length = (sum(len(h) + i.size + len(PART_END)
                                   for h, i in zip(heads, found, strict=True)) + len(closing))
    await response.prepare(request)
    groups = _batches(found)
    # Two reusable buffers (one being sent, one being filled), allocated here once: batches
    # read into them keep the server's memory flat over any number of parts.
    width = max(_BATCH_BYTES, max(sum(len(heads[i]) + found[i].size + len(PART_END)
                                      for i in g) for g in groups))
    buffers = [bytearray(width), bytearray(width)]

    def load(g: int) -> asyncio.Future[Any]:
        group = groups[g]
        if len(group) == 1 and found[group[0]].size >= _SMALL:
            return asyncio.ensure_future(store.open_local(found[group[0]].storage_key))
        buf = memoryview(buffers[g % 2])
        items, pos = [], 0
        for i in group:
            head = heads[i]
            buf[pos:pos + len(head)] = head
            pos += len(head)
            items.append((found[i].storage_key, buf[pos:pos + found[i].size]))
            pos += found[i].size
            buf[pos:pos + len(PART_END)] = PART_END
            pos += len(PART_END)
        filled = asyncio.ensure_future(store.read_into(items))
        return asyncio.ensure_future(_filled(filled, buf[:pos]))

    pending = load(0)
    try:
        for g, group in enumerate(groups):
            loaded = await pending
            if g + 1 < len(groups):
                pending = load(g + 1)
            if isinstance(loaded, memoryview):
                # A copy: a transport may keep what it could not send yet (Python 3.12 keeps
                # memoryviews), and this buffer is refilled for the batch after next.
                await response.write(bytes(loaded))
                continue
            i = group[0]
            try:
                await response.write(heads[i])
                await _send_blob(request, response, store, found[i], loaded)
            finally:
                if loaded is not None:
                    loaded.close()  # a read-only regular file: close(2) does not wait on the disk
            await response.write(PART_END)
        await response.write(closing)
    except OSError as exc:
        # A file the index names is gone or short: break the response rather than lie.
        log.error("retrieve of study %s aborted: %s", found[0].study_uid, exc)
        raise
    finally:  # a prefetch left by an early exit
        if not pending.done():
            pending.cancel()
        elif not pending.cancelled() and pending.exception() is None:
            result = pending.result()
            if result is not None and not isinstance(result, memoryview):
                result.close()
    await response.write_eof()
    return response


async def metadata(request: web.Request) -> web.StreamResponse:
    """GET .../metadata at study, series or instance level (PS3.18 §10.4.1.1.2)."""
    study, series, sop = _scope(request)
    if not any(r.type in ("application/dicom+json", "application/json", "*/*", "application/*")
               for r in parse_accept(request.headers.get("Accept"))):
        raise web.HTTPNotAcceptable(text="metadata is served as application/dicom+json")
    reader: IndexReader = request.app[keys.READER]
    base = base_url(request).encode("utf-8")
    token = BASE_URL_TOKEN.encode("ascii")
    response: web.StreamResponse | None = None
    buf: list[bytes] = []
    size = 0
    async for doc in reader.metadata(study, series, sop):
        buf.append(doc.replace(token, base))
        size += len(doc)
        if size >= 1 << 20:  # stream large results instead of building them whole
            if response is None:
                response = await _start_json_stream(request)
                await response.write(b"[" + b",".join(buf))
            else:
                await response.write(b"," + b",".join(buf))
            buf, size = [], 0
    if response is None:
        if not buf:
            raise web.HTTPNotFound(text="no such study, series or instance")
        return web.Response(body=b"[" + b",".join(buf) + b"]",
                            content_type="application/dicom+json")
    await response.write((b"," + b",".join(buf) if buf else b"") + b"]")
    await response.write_eof()
    return response


async def _start_json_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/dicom+json"})
    await response.prepare(request)
    return response


def _read_bulk_by_parsing(store: BlobStore, key: str, tag_path: str) -> bytes:
    """Bulk value of a file whose offsets are not usable (deflated or big endian): parse it."""
    with store.open_sync(key) as fp:
        ds = dcmread(fp)
    parts = tag_path.split("/")
    node = ds
    for i in range(0, len(parts) - 1, 2):
        node = node[int(parts[i], 16)].value[int(parts[i + 1])]
    elem = node[int(parts[-1], 16)]
    value = elem.value
    if isinstance(value, bytes) and elem.VR in ("OW", "OF", "OL", "OD", "OV") and not ds.is_little_endian:
        # PS3.18 §8.7.3.3.2: bulk data is little endian; swap the file's big-endian words.
        size = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}[elem.VR]
        value = b"".join(value[j:j + size][::-1] for j in range(0, len(value), size))
    return value


async def bulkdata(request: web.Request) -> web.StreamResponse:
    """GET .../instances/{instance}/bulk/{path}: one bulk value as application/octet-stream."""
    study, series, sop = _scope(request)
    tag_path = request.match_info["path"]
    if not all(p.isalnum() and len(p) <= 8 for p in tag_path.split("/")):
        raise web.HTTPBadRequest(text="malformed bulk data path")
    if not any(r.type in ("multipart/related", "application/octet-stream", "*/*", "multipart/*",
                          "application/*") for r in parse_accept(request.headers.get("Accept"))):
        raise web.HTTPNotAcceptable(text='bulk data is multipart/related; type="application/octet-stream"')
    reader: IndexReader = request.app[keys.READER]
    assert series is not None and sop is not None
    found = await reader.bulk(study, series, sop, tag_path)
    if found is None:
        raise web.HTTPNotFound(text="no such bulk data")
    inst, (offset, length) = found
    store = request.app[keys.STORE]
    boundary = new_boundary()
    response = web.StreamResponse(headers={
        "Content-Type": MultipartWriter.content_type(boundary, "application/octet-stream")})
    await response.prepare(request)
    writer = MultipartWriter(response, boundary)
    if offset is None:
        loop = asyncio.get_running_loop()
        value = await loop.run_in_executor(None, _read_bulk_by_parsing, store, inst.storage_key,
                                           tag_path)
        await writer.begin_part({"Content-Type": "application/octet-stream",
                                 "Content-Length": str(len(value))})
        await response.write(value)
    else:
        await writer.begin_part({"Content-Type": "application/octet-stream",
                                 "Content-Length": str(length)})
        async for chunk in store.open_range(inst.storage_key, offset, offset + length):
            await response.write(chunk)
    await writer.end_part()
    await writer.close()
    await response.write_eof()
    return response
