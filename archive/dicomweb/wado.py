"""WADO-RS: Retrieve Transaction (PS3.18 §10.4): instances, metadata and bulk data.

Instances are streamed from storage into a ``multipart/related`` response, transcoded when the
client does not accept their stored transfer syntax (archive/pixels/transcode.py); metadata is
the DICOM JSON stored at ingest, concatenated, never rebuilt from files.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, BinaryIO

from aiohttp import web
from pydicom import dcmread

from archive import keys
from archive.auth import Visibility, visibility
from archive.dicom.jsonmodel import BASE_URL_TOKEN
from archive.dicom.uids import is_valid_uid
from archive.dicomweb import ranges, zipstream
from archive.dicomweb.media import base_url, parse_accept, uid_param
from archive.dicomweb.multipart import PART_END, MultipartWriter, new_boundary
from archive.index.reader import IndexReader, StoredInstance
from archive.pixels import transcode
from archive.pixels.codecpool import CodecPool
from storage.base import BlobStore

log = logging.getLogger("archive.wado")

_DICOM_OK = ("application/dicom", "*/*", "application/*", "multipart/*")


def _negotiate_dicom(request: web.Request) -> transcode.Acceptable:
    """The transfer syntaxes the client accepts for application/dicom, in its order of
    preference (PS3.18 §8.7.3.7, §8.7.8.2), or 406 if no acceptable media type is one.

    ``transfer-syntax=*`` accepts the stored one; a range without the parameter accepts the
    default, Explicit VR Little Endian, or the stored syntax of a lossy instance (PS3.18
    §8.7.3.4)."""
    syntaxes: list[str] = []
    any_ts = default = matched = False
    for mr in parse_accept(request.headers.get("Accept")):
        if mr.type == "multipart/related":
            if mr.params.get("type", "application/dicom").lower() != "application/dicom":
                continue
        elif mr.type not in _DICOM_OK:
            continue
        matched = True
        ts = mr.params.get("transfer-syntax")
        if ts == "*":
            any_ts = True
            continue
        if not ts:
            default, ts = True, transcode.ExplicitVRLittleEndian
        elif not is_valid_uid(ts):
            raise web.HTTPBadRequest(text=f"transfer-syntax: {ts[:70]!r} is not a valid UID")
        if ts not in syntaxes:
            syntaxes.append(ts)
    if matched:
        return transcode.Acceptable(tuple(syntaxes), any_ts, default)
    raise web.HTTPNotAcceptable(
        text='retrieve offers multipart/related; type="application/dicom" (with transfer-syntax=*, '
             "a transfer syntax UID, or none for Explicit VR Little Endian)")


def _scope(request: web.Request) -> tuple[str, str | None, str | None]:
    study = uid_param(request, "study")
    series = uid_param(request, "series") if "series" in request.match_info else None
    sop = uid_param(request, "instance") if "instance" in request.match_info else None
    return study, series, sop


async def retrieve(request: web.Request) -> web.StreamResponse:
    """GET /studies/{study}[/series/{series}[/instances/{instance}]]"""
    study, series, sop = _scope(request)
    reader: IndexReader = request.app[keys.READER]
    if sop is None and zipstream.wants_zip(request):
        found = await reader.instances(study, series, None, visibility(request))
        if not found:
            raise web.HTTPNotFound(text="no such study or series")
        return await zipstream.stream_zip(request, found, series or study)
    acceptable = _negotiate_dicom(request)
    found = await reader.instances(study, series, sop, visibility(request))
    if not found:
        raise web.HTTPNotFound(text="no such study, series or instance")
    if all(transcode.stored_acceptable(i.transfer_syntax_uid, acceptable) for i in found):
        return await _stream_instances(request, found)  # as stored: the fast path
    plan = await _transcoding_plan(reader, (study, series, sop), acceptable, visibility(request))
    if not plan:
        raise web.HTTPNotFound(text="no such study, series or instance")
    if all(targets[0] == inst.transfer_syntax_uid for inst, targets in plan):
        return await _stream_instances(request, [inst for inst, _ in plan])
    return await _stream_transcoded(request, plan)


Plan = list[tuple[StoredInstance, list[str]]]


async def _transcoding_plan(reader: IndexReader, scope: tuple[str, str | None, str | None],
                            acceptable: transcode.Acceptable, visible: Visibility) -> Plan:
    """Each instance with the transfer syntaxes it may be sent in, best first (the stored one
    alone when acceptable), decided from the stored metadata before anything is sent: 406 naming
    the instances that fit no acceptable transfer syntax."""
    plan: Plan = []
    refused: list[str] = []
    for source in await reader.pixel_source(*scope, visible):
        inst = source.instance
        try:
            plan.append((inst, transcode.candidates(inst.transfer_syntax_uid, source.meta, acceptable)))
        except transcode.NotTranscodable as exc:
            refused.append(f"{inst.sop_uid}: {exc}")
    if refused:
        more = f" (and {len(refused) - 3} more)" if len(refused) > 3 else ""
        raise web.HTTPNotAcceptable(
            text=f"{len(refused)} of {len(refused) + len(plan)} instances cannot be sent in an "
                 f"acceptable transfer syntax: {'; '.join(refused[:3])}{more}")
    return plan


async def _send_blob(request: web.Request, response: web.StreamResponse, store: BlobStore,
                     inst: StoredInstance, fobj: BinaryIO | None) -> None:
    """One stored file into the response: sendfile(2) when the store gave a local file, else a
    chunked copy. Either way nothing of it is held in memory."""
    if fobj is None:
        copied = 0
        async for chunk in store.open_range(inst.storage_key):
            copied += len(chunk)
            await response.write(chunk)
        if copied != inst.size:  # as for sendfile below: the connection is cut, not a short part
            raise OSError(f"stored object of {inst.sop_uid} has {copied} bytes, {inst.size} indexed")
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

    def alone(group: list[int]) -> bool:  # a large instance: streamed, never buffered
        return len(group) == 1 and found[group[0]].size >= _SMALL

    # Two reusable buffers (one being sent, one being filled), allocated here once: batches
    # read into them keep the server's memory flat over any number of parts.
    width = max([_BATCH_BYTES] + [sum(len(heads[i]) + found[i].size + len(PART_END) for i in g)
                                  for g in groups if not alone(g)])
    buffers = [bytearray(width), bytearray(width)]

    def load(g: int) -> asyncio.Future[Any]:
        group = groups[g]
        if alone(group):
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


async def _transcode_stored(store: BlobStore, codecs: CodecPool, inst: StoredInstance,
                            targets: list[str]) -> tuple[str, bytes]:
    data = await store.read_range(inst.storage_key, 0, inst.size)
    return await codecs.run(transcode.transcode_first, data, targets)


async def _stream_transcoded(request: web.Request, plan: Plan) -> web.StreamResponse:
    """Instances as multipart/related parts, each in the transfer syntax the plan gives it: files
    sent as stored are copied, the others transcoded in an executor before their part begins,
    the next instance's transcoding overlapping the sending of the current one (at most two
    instances in memory; on a multi-core machine the codec then runs while the network drains).
    Part lengths are not known in advance, so the response is chunked. A codec failure before
    the first part is a 406; after it, the connection is dropped: the client sees a truncated
    response, never a corrupted instance."""
    store: BlobStore = request.app[keys.STORE]
    codecs = request.app[keys.CODECS]
    boundary = new_boundary()
    response = web.StreamResponse(headers={
        "Content-Type": MultipartWriter.content_type(boundary, "application/dicom")})

    def prepare(k: int) -> asyncio.Future[tuple[str, bytes]] | None:
        if k >= len(plan) or plan[k][1][0] == plan[k][0].transfer_syntax_uid:
            return None  # past the end, or sent as stored
        return asyncio.ensure_future(_transcode_stored(store, codecs, plan[k][0], plan[k][1]))

    pending = prepare(0)
    try:
        for k, (inst, _) in enumerate(plan):
            ts, body = inst.transfer_syntax_uid, None
            try:
                current, pending = pending, prepare(k + 1)
                if current is not None:
                    ts, body = await current
                if not response.prepared:
                    await response.prepare(request)
                await response.write(MultipartWriter.part_head(boundary, {
                    "Content-Type": f"application/dicom; transfer-syntax={ts}",
                    "Content-Length": str(inst.size if body is None else len(body))}))
                if body is None:
                    async for chunk in store.open_range(inst.storage_key):
                        await response.write(chunk)
                else:
                    await response.write(body)
                    body = None
                await response.write(PART_END)
            except (transcode.NotTranscodable, OSError) as exc:
                if not response.prepared:
                    if isinstance(exc, transcode.NotTranscodable):
                        raise web.HTTPNotAcceptable(text=f"{inst.sop_uid} cannot be sent in an acceptable "
                                                         f"transfer syntax: {exc}") from exc
                    raise
                log.error("retrieve of study %s aborted at %s: %s", inst.study_uid, inst.sop_uid, exc)
                if request.transport is not None:
                    request.transport.close()  # no closing delimiter: the client sees the break
                return response
    finally:
        if pending is not None and not pending.done():
            pending.cancel()  # the executor finishes it; its result is dropped
    await response.write(MultipartWriter.closing(boundary))
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
    async for doc in reader.metadata(study, series, sop, visible=visibility(request)):
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
    found = await reader.bulk(study, series, sop, tag_path, visibility(request))
    if found is None:
        raise web.HTTPNotFound(text="no such bulk data")
    inst, (offset, length) = found
    store = request.app[keys.STORE]
    value: bytes | None = None
    if offset is None:
        loop = asyncio.get_running_loop()
        value = await loop.run_in_executor(None, _read_bulk_by_parsing, store, inst.storage_key,
                                           tag_path)
        length = len(value)
    assert length is not None
    # Range (RFC 9110 §14): 206 with those bytes only; a bare body unless multipart was asked.
    span = ranges.byte_range(request.headers.get("Range"), length)
    start, end = span if span is not None else (0, length)
    part_headers = {"Content-Type": "application/octet-stream", "Content-Length": str(end - start)}
    boundary = new_boundary()
    response = web.StreamResponse(status=200 if span is None else 206, headers={
        "Content-Type": MultipartWriter.content_type(boundary, "application/octet-stream"),
        "Accept-Ranges": "bytes"})
    multipart = span is None or ranges.wants_multipart(
        [r.type for r in parse_accept(request.headers.get("Accept"))])
    if span is not None:
        if multipart:
            part_headers["Content-Range"] = ranges.content_range(span, length)
        else:
            response.headers["Content-Type"] = "application/octet-stream"
            response.headers["Content-Range"] = ranges.content_range(span, length)
            response.content_length = end - start
    await response.prepare(request)
    writer = MultipartWriter(response, boundary)
    if multipart:
        await writer.begin_part(part_headers)
    if value is not None:
        await response.write(value[start:end])
    else:
        assert offset is not None
        async for chunk in store.open_range(inst.storage_key, offset + start, offset + end):
            await response.write(chunk)
    if multipart:
        await writer.end_part()
        await writer.close()
    await response.write_eof()
    return response
