"""Admin API for release states: ``POST /api/release`` sets a patient's state, ``GET
/api/release/log`` lists the changes, ``GET /api/quarantine`` the quarantined patients."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from archive import keys
from archive.auth import require_admin
from archive.index.schema import instances, patients, release_log, series, studies
from archive.release.states import ReleaseError, set_state


async def set_release(request: web.Request) -> web.Response:
    """Body: ``{"patient_id": "...", "state": "open|sequestered|quarantined", "reason": "..."}``."""
    admin = require_admin(request)
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body must be a JSON object") from None
    if not isinstance(body, dict) or not isinstance(body.get("patient_id"), str) \
            or not isinstance(body.get("state"), str):
        raise web.HTTPBadRequest(text='give {"patient_id": "...", "state": "..."}')
    reason = body.get("reason") if isinstance(body.get("reason"), str) else ""
    try:
        async with request.app[keys.ENGINE].begin() as conn:
            changes = await conn.run_sync(set_state, body["patient_id"], body["state"], admin.name,
                                          "manual", reason)
    except ReleaseError as exc:
        raise web.HTTPNotFound(text=str(exc)) if "no patient" in str(exc) else \
            web.HTTPBadRequest(text=str(exc)) from None
    return web.json_response({"changed": [c.__dict__ for c in changes]})


def _log(conn: Connection, patient_id: str | None) -> list[dict[str, Any]]:
    stmt = select(release_log).order_by(release_log.c.pk)
    if patient_id:
        stmt = stmt.where(release_log.c.patient_id == patient_id)
    return [{"patient_id": r.patient_id, "previous_state": r.previous_state, "state": r.state,
             "actor": r.actor, "rule": r.rule, "reason": r.reason,
             "at": r.at.isoformat() if r.at else None} for r in conn.execute(stmt.limit(10_000))]


async def release_history(request: web.Request) -> web.Response:
    require_admin(request)
    async with request.app[keys.ENGINE].connect() as conn:
        rows = await conn.run_sync(_log, request.query.get("patient_id"))
    return web.json_response(rows)


def _quarantined(conn: Connection) -> list[dict[str, Any]]:
    """Quarantined patients, their studies and why (the reasons of their flagged instances)."""
    stmt = (select(patients.c.patient_id, studies.c.study_uid, func.count(instances.c.pk).label("n"),
                   func.max(instances.c.quarantine_reason).label("reason"))
            .select_from(patients.join(studies, studies.c.patient_pk == patients.c.pk)
                         .join(series, series.c.study_pk == studies.c.pk)
                         .join(instances, instances.c.series_pk == series.c.pk))
            .where(patients.c.release_state == "quarantined")
            .group_by(patients.c.patient_id, studies.c.study_uid).order_by(patients.c.patient_id))
    return [{"patient_id": r.patient_id, "study_uid": r.study_uid, "instances": r.n,
             "reason": r.reason or ""} for r in conn.execute(stmt)]


async def quarantine_list(request: web.Request) -> web.Response:
    require_admin(request)
    async with request.app[keys.ENGINE].connect() as conn:
        rows = await conn.run_sync(_quarantined)
    return web.json_response(rows)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/release", set_release)
    app.router.add_get("/api/release/log", release_history)
    app.router.add_get("/api/quarantine", quarantine_list)
