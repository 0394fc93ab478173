"""``GET /api/harmonization/unmapped``: the curator's report of unmapped study descriptions."""

from __future__ import annotations

from aiohttp import web

from archive import keys
from archive.auth import visibility
from archive.index.procedures import unmapped


async def unmapped_report(request: web.Request) -> web.Response:
    """Unmapped descriptions with their study counts, most frequent first, in the columns of
    MIDRC's pending list (StudyDescription, Modality, frequency, Contributor) plus the reason.
    ``?limit=N`` keeps the first N."""
    raw = request.query.get("limit", "")
    if raw and not (raw.isdigit() and 0 < int(raw) <= 1_000_000):
        raise web.HTTPBadRequest(text="limit must be a whole number between 1 and 1000000")
    async with request.app[keys.ENGINE].connect() as conn:
        rows = await conn.run_sync(unmapped, visibility(request), int(raw) if raw else None)
    return web.json_response(rows)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/harmonization/unmapped", unmapped_report)
