"""HTTP front end of the clinical data: ``POST /api/clinical`` imports files, ``GET
/api/clinical/report`` gives the linkage report. Both answer JSON.

``POST /api/clinical`` takes one file as the body (``text/tab-separated-values``, ``text/csv`` or
``application/json``; its node from ``?node=`` or its type column), or several as
``multipart/form-data`` (each part named by its filename). 200: the import report; 422: the
row-level errors, nothing changed; 400: a malformed request; 415: another media type.
"""

from __future__ import annotations

from aiohttp import BodyPartReader, web

from archive import keys
from archive.auth import require_admin
from archive.clinical.dictionary import NODES
from archive.clinical.importer import import_clinical
from archive.clinical.report import linkage_report

# Media type -> file extension of a single-file body (the importer reads the format from it).
_SINGLE = {
    "text/tab-separated-values": ".tsv",
    "text/tsv": ".tsv",
    "text/csv": ".csv",
    "application/json": ".json",
}
_MAX_REPORT_LIMIT = 100_000


def _problem(status: int, reason: str) -> web.Response:
    return web.json_response({"ok": False, "error": reason}, status=status)


async def _multipart_files(request: web.Request) -> list[tuple[str, bytes]]:
    reader = await request.multipart()
    files: list[tuple[str, bytes]] = []
    while True:
        part = await reader.next()
        if part is None:
            return files
        if not isinstance(part, BodyPartReader):
            raise web.HTTPBadRequest(text="nested multipart bodies are not supported")
        name = part.filename or part.name or f"part{len(files) + 1}"
        files.append((name, bytes(await part.read(decode=True))))


async def import_files(request: web.Request) -> web.Response:
    """POST /api/clinical (admin)."""
    require_admin(request)
    ctype = request.content_type.lower()
    node = request.query.get("node", "")
    if node and node not in NODES:
        return _problem(400, f"node={node!r}: not one of {', '.join(NODES)}")
    try:
        if ctype == "multipart/form-data":
            files = await _multipart_files(request)
            if not files:
                return _problem(400, "the multipart body has no parts")
        elif ctype in _SINGLE:
            # The file is named after ?node= so that the importer recognises it, as case.tsv would be.
            files = [((node or "body") + _SINGLE[ctype], await request.read())]
        else:
            return _problem(415, f"Content-Type {ctype or '(none)'} is not supported: send "
                                 f"{', '.join(_SINGLE)} or multipart/form-data")
    except web.HTTPBadRequest as exc:
        return _problem(400, exc.text or "malformed request body")
    except ValueError as exc:  # aiohttp's multipart reader on a broken body
        return _problem(400, f"malformed multipart body: {exc}")
    report = await import_clinical(request.app[keys.ENGINE], files)
    return web.json_response(report.to_json(), status=200 if report.ok else 422)


async def report(request: web.Request) -> web.Response:
    """GET /api/clinical/report[?limit=N] (admin: it names patients of every release state):
    lists cut at N entries (default 1000)."""
    require_admin(request)
    raw = request.query.get("limit", "1000")
    if not raw.isdigit() or not 0 < int(raw) <= _MAX_REPORT_LIMIT:
        return _problem(400, f"limit={raw!r}: give a number from 1 to {_MAX_REPORT_LIMIT}")
    result = await linkage_report(request.app[keys.ENGINE], int(raw))
    return web.json_response(result.to_json())


def add_routes(app: web.Application) -> None:
    """Register the clinical data routes on ``app``."""
    app.router.add_post("/api/clinical", import_files)
    app.router.add_get("/api/clinical/report", report)
