"""STOW-RS: Store Instances (PS3.18 §10.5).

Each part of the ``multipart/related; type="application/dicom"`` body is streamed into storage as
it arrives (never held whole in memory) and goes through the ingest pipeline; the batch is indexed
in one transaction per up to ``_BATCH`` instances and only then acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web

from archive.dicomweb.media import base_url, json_response, parse_media_type, uid_param, warning_header
from archive.ingest import CANNOT_UNDERSTAND, Ingest, IngestResult, Prepared

log = logging.getLogger("archive.stow")

_BATCH = 100
_CHUNK = 1 << 20


class _BadBody(Exception):
    """The multipart body itself is broken (boundary, framing, truncation)."""


def _check_content_type(request: web.Request) -> None:
    ctype = request.headers.get("Content-Type", "")
    mr = parse_media_type(ctype)
    if mr.type != "multipart/related":
        raise web.HTTPUnsupportedMediaType(
            text='STOW-RS takes multipart/related; type="application/dicom"')
    part_type = mr.params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise web.HTTPUnsupportedMediaType(
            text=f"multipart type {part_type!r} is not supported; use application/dicom")
    if not mr.params.get("boundary"):
        raise web.HTTPBadRequest(text="multipart/related body without a boundary parameter")


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    try:
        while chunk := await part.read_chunk(_CHUNK):
            yield chunk
    except (ValueError, AssertionError) as exc:
        raise _BadBody(str(exc)) from exc


async def _next_part(reader: MultipartReader) -> BodyPartReader | None:
    try:
        part = await reader.next()
    except (ValueError, AssertionError) as exc:
        raise _BadBody(str(exc)) from exc
    if part is not None and not isinstance(part, BodyPartReader):
        raise _BadBody("nested multipart bodies are not supported")
    return part


def _failed_item(res: IngestResult) -> dict[str, Any]:
    item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [res.status]}}
    if res.sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [res.sop_class_uid]}
    if res.sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [res.sop_uid]}
    return dict(sorted(item.items()))


def _stored_item(res: IngestResult, base: str) -> dict[str, Any]:
    url = f"{base}/studies/{res.study_uid}/series/{res.series_uid}/instances/{res.sop_uid}"
    return {"00081150": {"vr": "UI", "Value": [res.sop_class_uid]},
            "00081155": {"vr": "UI", "Value": [res.sop_uid]},
            "00081190": {"vr": "UR", "Value": [url]}}


async def _receive(request: web.Request, ingest: Ingest, study: str | None) -> list[IngestResult]:
    """Ingest every part; returns the results in part order. Raises _BadBody on framing errors."""
    reader = MultipartReader(request.headers, request.content)
    results: list[IngestResult | None] = []
    batch: list[tuple[int, Prepared]] = []

    async def flush() -> None:
        done = await ingest.commit([p for _, p in batch])
        for (i, _), res in zip(batch, done, strict=True):
            results[i] = res
        batch.clear()

    try:
        while (part := await _next_part(reader)) is not None:
            ptype = parse_media_type(part.headers.get("Content-Type", "application/dicom")).type
            if ptype != "application/dicom":
                await part.release()
                results.append(IngestResult(CANNOT_UNDERSTAND, f"part of type {ptype!r} ignored"))
                continue
            prepared = await ingest.prepare(_part_chunks(part), study)
            if isinstance(prepared, Prepared):
                results.append(None)
                batch.append((len(results) - 1, prepared))
                if len(batch) >= _BATCH:
                    await flush()
            else:
                results.append(prepared)
    except _BadBody:
        # Instances already indexed stay; the ones staged in this batch are dropped.
        for _, p in batch:
            await ingest.store.delete(p.record.storage_key)
        raise
    await flush()
    return [r for r in results if r is not None]


async def store_instances(request: web.Request) -> web.Response:
    """POST /studies and POST /studies/{study}."""
    study = uid_param(request, "study") if "study" in request.match_info else None
    _check_content_type(request)
    ingest: Ingest = request.app["ingest"]
    try:
        results = await _receive(request, ingest, study)
    except _BadBody as exc:
        raise web.HTTPBadRequest(text=f"malformed multipart body: {exc}") from None
    if not results:
        raise web.HTTPBadRequest(text="the multipart body holds no parts")
    base = base_url(request)
    stored = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    body: dict[str, Any] = {}
    studies = {r.study_uid for r in stored} | ({study} if study else set())
    if len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{studies.pop()}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_failed_item(r) for r in failed]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_stored_item(r, base) for r in stored]}
    status = 200 if not failed else 202 if stored else 409
    headers: dict[str, str] = {}
    messages = list(dict.fromkeys(f"{r.sop_uid or 'part'}: {r.message}" for r in failed))
    for r in failed:
        log.warning("stow failed sop=%s reason=0x%04X %s", r.sop_uid, r.status, r.message)
    response = json_response(dict(sorted(body.items())), request, status, headers)
    for msg in messages[:20]:
        response.headers.add("Warning", warning_header(request, msg))
    return response
