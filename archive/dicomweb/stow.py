"""STOW-RS: Store Instances (PS3.18 §10.5).

Each part of the ``multipart/related; type="application/dicom"`` body is streamed into storage as
it arrives (never held whole in memory) and goes through the ingest pipeline; the batch is indexed
in one transaction per up to ``_BATCH`` instances and only then acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from archive import keys
from archive.auth import require_store
from archive.dicomweb.media import base_url, json_response, parse_media_type, uid_param, warning_header
from archive.dicomweb.multipart import MultipartError, MultipartReader
from archive.ingest import CANNOT_UNDERSTAND, Expected, Ingest, IngestResult, Prepared
from archive.limits import GATE

log = logging.getLogger("archive.stow")

_BATCH = 50
_CHUNK = 1 << 20


def _boundary(request: web.Request) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` body, else 415/400."""
    mr = parse_media_type(request.headers.get("Content-Type", ""))
    if mr.type != "multipart/related":
        raise web.HTTPUnsupportedMediaType(
            text='STOW-RS takes multipart/related; type="application/dicom"')
    part_type = mr.params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise web.HTTPUnsupportedMediaType(
            text=f"multipart type {part_type!r} is not supported; use application/dicom")
    boundary = mr.params.get("boundary")
    if not boundary:
        raise web.HTTPBadRequest(text="multipart/related body without a boundary parameter")
    return boundary


def _failed_item(res: IngestResult) -> dict[str, Any]:
    item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [res.status]}}
    if res.sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [res.sop_class_uid]}
    if res.sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [res.sop_uid]}
    return dict(sorted(item.items()))


def _stored_item(res: IngestResult, base: str) -> dict[str, Any]:
    url = f"{base}/studies/{res.study_uid}/series/{res.series_uid}/instances/{res.sop_uid}"
    item = {"00081150": {"vr": "UI", "Value": [res.sop_class_uid]},
            "00081155": {"vr": "UI", "Value": [res.sent_sop_uid or res.sop_uid]},
            "00081190": {"vr": "UR", "Value": [url]}}
    if res.coerced:
        # PS3.18 Table 10.5.3-3: Warning Reason B000, Coercion of Data Elements (de-identified:
        # stored under pseudonyms; the item names the instance as sent, the URL as stored).
        item["00081196"] = {"vr": "US", "Value": [0xB000]}
    return dict(sorted(item.items()))


async def _receive(request: web.Request, ingest: Ingest, study: str | None,
                   boundary: str) -> list[IngestResult]:
    """Ingest every part; returns the results in part order. Raises MultipartError on framing
    errors.

    Parts are received one after the other (the body is one stream), but each one's parsing runs
    while the next arrives, and a batch is made durable and indexed together.
    """
    reader = MultipartReader(request.app[GATE].body(request), boundary, _CHUNK)
    expected = Expected(study_uid=study) if study else None
    results: list[IngestResult | None] = []
    pending: list[tuple[int, asyncio.Task[Prepared | IngestResult]]] = []

    async def flush() -> None:
        done = await asyncio.gather(*(t for _, t in pending))
        batch = [(i, p) for (i, _), p in zip(pending, done, strict=True)]
        pending.clear()
        for i, p in batch:
            if isinstance(p, IngestResult):
                results[i] = p
        ready = [(i, p) for i, p in batch if isinstance(p, Prepared)]
        committed = await ingest.commit([p for _, p in ready])
        for (i, _), res in zip(ready, committed, strict=True):
            results[i] = res

    try:
        while (headers := await reader.next_part()) is not None:
            ptype = parse_media_type(headers.get("content-type", "application/dicom")).type
            if ptype != "application/dicom":
                results.append(IngestResult(CANNOT_UNDERSTAND, f"part of type {ptype!r} ignored"))
                continue
            staged = await ingest.receive(reader.read_chunks())
            results.append(None)
            if isinstance(staged, IngestResult):
                results[-1] = staged
                continue
            pending.append((len(results) - 1, asyncio.create_task(ingest.finish(staged, expected))))
            if len(pending) >= _BATCH:
                await flush()
        await flush()
    except BaseException:
        # A broken body or a lost client: instances already indexed stay; the ones of the open
        # batch are discarded before anything references them.
        for _, task in pending:
            outcome = await asyncio.gather(task, return_exceptions=True)
            if isinstance(outcome[0], Prepared):
                await ingest.discard([outcome[0]])
        raise
    return [r for r in results if r is not None]


async def store_instances(request: web.Request) -> web.Response:
    """POST /studies and POST /studies/{study}."""
    require_store(request)  # before a byte of the body is read
    study = uid_param(request, "study") if "study" in request.match_info else None
    boundary = _boundary(request)
    ingest: Ingest = request.app[keys.INGEST]
    try:
        results = await _receive(request, ingest, study, boundary)
    except MultipartError as exc:
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
