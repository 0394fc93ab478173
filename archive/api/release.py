"""Admin API for release states: ``POST /api/release`` sets a patient's state, ``GET
/api/release/log`` lists the changes, ``GET /api/quarantine`` the quarantined patients and
``DELETE /api/quarantine/{patient_id}`` deletes one's data."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from archive import keys
from archive.auth import QUARANTINED, require_admin
from archive.index.delete import delete_patient
from archive.index.schema import instances, patients, release_log, series, studies
from archive.release.states import ReleaseError, set_state

log = logging.getLogger("archive.release")


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
    patient_id = request.query.get("patient_id", "").replace("\x00", "")  # no stored id holds NUL
    async with request.app[keys.ENGINE].connect() as conn:
        rows = await conn.run_sync(_log, patient_id)
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


def _delete_quarantined(conn: Connection, patient_id: str, actor: str) -> list[str] | None:
    """The storage keys of the deleted instances; None when no such patient is quarantined."""
    rows = conn.execute(select(patients.c.pk, patients.c.issuer_of_patient_id).where(
        patients.c.patient_id == patient_id, patients.c.release_state == QUARANTINED)).all()
    if not rows:
        return None
    keys: list[str] = []
    for row in rows:
        keys += delete_patient(conn, row.pk)
        conn.execute(insert(release_log).values(
            patient_id=patient_id, issuer_of_patient_id=row.issuer_of_patient_id,
            previous_state=QUARANTINED, state="deleted", actor=actor, rule="manual",
            reason=f"{len(keys)} instance(s) deleted"))
    return keys


async def delete_quarantined(request: web.Request) -> web.Response:
    """DELETE /api/quarantine/{patient_id} (admin): the quarantined patient's data, gone from the
    index and then from storage. Only quarantined patients: other deletions are not offered."""
    admin = require_admin(request)
    patient_id = request.match_info["patient_id"].replace("\x00", "")  # no stored id holds NUL
    async with request.app[keys.ENGINE].begin() as conn:
        keys_ = await conn.run_sync(_delete_quarantined, patient_id, admin.name)
    if keys_ is None:
        raise web.HTTPNotFound(text="no quarantined patient with this PatientID")
    store = request.app[keys.STORE]
    for key in keys_:
        try:
            await store.delete(key)
        except Exception:  # an unreferenced blob is never served; it only wastes space
            log.warning("could not delete the blob of a deleted instance: %s", key)
    log.warning("deleted quarantined patient data: %d instance(s) by %s", len(keys_), admin.name)
    return web.json_response({"deleted_instances": len(keys_)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/release", set_release)
    app.router.add_get("/api/release/log", release_history)
    app.router.add_get("/api/quarantine", quarantine_list)
    app.router.add_delete("/api/quarantine/{patient_id}", delete_quarantined)
