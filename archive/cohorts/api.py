"""HTTP front end of cohorts (docs/cohorts.md). JSON in and out; errors are
``{"ok": false, "error": ..., "field": ...}`` with 400 (bad request, naming the field), 404
(unknown cohort) or 415 (not JSON).

- ``POST /api/cohorts/query``: ``{"filters": {...}, "limit": 100, "offset": 0, "facets": true}`` ->
  counts, facets and a page of studies (``"facets"``: a list of names asks for those, the extra
  ones ``institution`` and ``release_state`` included);
- ``POST /api/cohorts`` ``{"name", "filters"}`` -> 201, the saved cohort; ``GET /api/cohorts``;
  ``GET /api/cohorts/{id}`` (with current counts); ``DELETE /api/cohorts/{id}``;
- ``GET /api/cohorts/{id}/manifest?format=json|csv``: one row per series, streamed;
- ``GET /api/cohorts/{id}/zip``: every instance of the cohort's studies, one streamed zip (the
  layout of the study download, archive/dicomweb/zipstream.py).

Small cells (``[release] min_cell_count``, for every caller but evaluators and admins): a count of
people or their images below the minimum is shown as "<N" (:func:`_public_counts`), and a cohort
whose study or patient count is below it (but not 0) is never listed, since its rows would count
it (their number, their PatientIDs, the ``more`` flag probed at each offset, the manifest's totals),
nor are its series, image and byte counts given. The query then answers its suppressed counts and
facets with no study, ``more`` false and ``withheld`` true; the manifest and the zip, which are
nothing but rows, are refused with 403. Evaluators and admins get everything. This guards counts
as shown; the open side's studies themselves are public (QIDO-RS lists them), so differencing two
large cohorts still lists a small group (docs/cohorts.md).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from archive import keys
from archive.auth import ADMIN, EVALUATOR, principal, require_admin, visibility
from archive.cohorts import manifest, store
from archive.cohorts.filters import FilterError, parse_filters
from archive.cohorts.query import ALL_FACETS, Members, cohort_counts, members, run_query
from archive.dicomweb import zipstream
from archive.dicomweb.media import base_url
from archive.query.run import QueryTimeout
from archive.release.sequester import is_small_cell, suppress

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
MAX_OFFSET = 1_000_000_000
_QUERY_KEYS = ("filters", "limit", "offset", "facets")
_SAVE_KEYS = ("name", "filters")


def _problem(status: int, reason: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error": reason}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


class _BadRequest(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


async def _json_object(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    if request.content_type.lower() != "application/json":
        raise _BadRequest(_problem(415, f"Content-Type {request.content_type or '(none)'} is not "
                                        "supported: send application/json"))
    try:
        body = json.loads(await request.read())
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors; absurd nesting
        raise _BadRequest(_problem(400, f"the body is not valid JSON: {str(exc)[:200]}")) from None
    if not isinstance(body, dict):
        raise _BadRequest(_problem(400, "the body must be a JSON object"))
    for key in body:
        if key not in allowed:
            raise _BadRequest(_problem(400, f"unknown key {str(key)[:80]!r}; the keys are "
                                            f"{', '.join(allowed)}", str(key)[:80]))
    return body


def _whole(body: dict[str, Any], name: str, default: int, maximum: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise FilterError(name, f"{value!r}: give a whole number from 0 to {maximum}")
    return value


def _facets(value: Any) -> bool | list[str]:
    """``true`` (the default facets), ``false``, or a list of facet names (the default ones and
    the extra ones: site and release state)."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FilterError("facets", f"{str(value)[:80]!r}: give true, false or a list of facet names")
    unknown = [v for v in value if v not in ALL_FACETS]
    if unknown:
        raise FilterError("facets", f"unknown facet {unknown[0][:80]!r}; the facets are "
                                    f"{', '.join(ALL_FACETS)}")
    return value


async def query(request: web.Request) -> web.Response:
    """POST /api/cohorts/query."""
    try:
        body = await _json_object(request, _QUERY_KEYS)
        filters = parse_filters(body.get("filters"))
        limit = _whole(body, "limit", DEFAULT_LIMIT, MAX_LIMIT)
        offset = _whole(body, "offset", 0, MAX_OFFSET)
        facets = _facets(body.get("facets", True))
    except _BadRequest as exc:
        return exc.response
    except FilterError as exc:
        return _problem(400, str(exc), exc.field)
    timeout = request.app[keys.CONFIG].qido.timeout
    try:
        result = await run_query(request.app[keys.ENGINE], filters, base_url(request), limit=limit,
                                 offset=offset, facets=facets, visible=visibility(request), timeout=timeout,
                                 min_cell=suppression_minimum(request))
    except QueryTimeout:
        return _problem(503, f"the cohort query took longer than the server's limit of {timeout:g} s "
                             "([qido] timeout) and was stopped; add filters or ask without facets")
    return web.json_response(_public_counts(request, result.to_json()))


_COUNTED = ("patients", "studies", "series", "instances")
_SIZES = ("series", "instances", "bytes")  # hidden outright for a small cell (_public_counts)


def suppression_minimum(request: web.Request) -> int | None:
    """The ``[release] min_cell_count`` below which the caller's counts are hidden, or None when
    the caller sees every count (evaluators and admins)."""
    if principal(request).role in (EVALUATOR, ADMIN):
        return None
    return request.app[keys.CONFIG].release.min_cell_count


def _public_counts(request: web.Request, out: dict[str, Any]) -> dict[str, Any]:
    """Counts and facets as the caller may see them: for anyone but evaluators and admins, a
    count of people or their images below ``[release] min_cell_count`` is shown as "<N", as data
    commons do; when the study or patient count is so shown, the series, image and byte counts
    are null (they would tell it)."""
    minimum = suppression_minimum(request)
    if minimum is None:
        return out
    counts = out.get("counts", {})
    if counts and (is_small_cell(counts.get("studies", 0), minimum)
                   or is_small_cell(counts.get("patients", 0), minimum)):
        # A small group's sizes would tell its count: with an images filter of one value, the
        # image count divided by it is the study count. Hidden whatever their own size.
        for key in _SIZES:  # (facet entries hold only studies and patients)
            counts[key] = None
    for key in _COUNTED:
        if isinstance(counts.get(key), int):
            counts[key] = suppress(counts[key], minimum)
    for entries in (out.get("facets") or {}).values():
        for entry in entries:
            for key in _COUNTED:
                if isinstance(entry.get(key), int):
                    entry[key] = suppress(entry[key], minimum)
    return out


def _api_root(request: web.Request) -> str:
    """Where /api is as the client sees it: beside the DICOMweb root (``[http] base_url`` when
    set, e.g. behind a proxy), else this request's host."""
    dicomweb = base_url(request)
    if dicomweb.endswith("/dicom-web"):
        return dicomweb.removesuffix("/dicom-web")
    return f"{request.scheme}://{request.host}"


def _links(request: web.Request, cohort_id: str) -> dict[str, str]:
    here = f"{_api_root(request)}/api/cohorts/{cohort_id}"
    return {"self": here, "manifest": here + "/manifest?format=json",
            "manifest_csv": here + "/manifest?format=csv", "zip": here + "/zip"}


async def save(request: web.Request) -> web.Response:
    """POST /api/cohorts: 201 with the cohort's id and its normalized filters."""
    try:
        body = await _json_object(request, _SAVE_KEYS)
        name = store.check_name(body.get("name"))
        filters = parse_filters(body.get("filters"))
    except _BadRequest as exc:
        return exc.response
    except FilterError as exc:
        return _problem(400, str(exc), exc.field)
    cohort = await store.save(request.app[keys.ENGINE], name, filters)
    links = _links(request, cohort.id)
    return web.json_response({**cohort.to_json(), "links": links}, status=201,
                             headers={"Location": f"/api/cohorts/{cohort.id}"})


async def list_cohorts(request: web.Request) -> web.Response:
    """GET /api/cohorts: the saved definitions, oldest first (no counts: one query each)."""
    found = await store.list_all(request.app[keys.ENGINE])
    return web.json_response([{**c.to_json(), "links": _links(request, c.id)} for c in found])


async def _saved(request: web.Request) -> store.SavedCohort:
    cohort = await store.get(request.app[keys.ENGINE], request.match_info["id"])
    if cohort is None:
        raise web.HTTPNotFound(text=json.dumps({"ok": False, "error": "no such cohort"}),
                               content_type="application/json")
    return cohort


async def get_cohort(request: web.Request) -> web.Response:
    """GET /api/cohorts/{id}: the definition and its current counts."""
    cohort = await _saved(request)
    counts = await cohort_counts(request.app[keys.ENGINE], cohort.parsed(), visibility(request))
    return web.json_response(_public_counts(request, {**cohort.to_json(), "counts": counts.to_json(),
                                                      "links": _links(request, cohort.id)}))


async def delete_cohort(request: web.Request) -> web.Response:
    """DELETE /api/cohorts/{id} (admin): 204; the studies are not touched."""
    require_admin(request)
    if not await store.remove(request.app[keys.ENGINE], request.match_info["id"]):
        return _problem(404, "no such cohort")
    return web.Response(status=204)


async def _listable(request: web.Request, cohort: store.SavedCohort) -> Members:
    """The cohort's members as the caller may have them listed; a small cell (the module's
    docstring) raises 403 for callers whose counts are suppressed."""
    found = await members(request.app[keys.ENGINE], cohort.parsed(), visibility(request))
    minimum = suppression_minimum(request)
    if minimum is not None and found.small(minimum):
        raise web.HTTPForbidden(text=json.dumps({"ok": False, "error": (
            f"the cohort has fewer than {minimum} studies or patients: its studies are listed "
            "(manifest, zip) to evaluators and admins only, so that its list does not tell its "
            "count ([release] min_cell_count)")}), content_type="application/json")
    return found


async def get_manifest(request: web.Request) -> web.StreamResponse:
    """GET /api/cohorts/{id}/manifest?format=json|csv (json by default); 403 for a small cell."""
    fmt = request.query.get("format", "json").lower()
    if fmt not in manifest.FORMATS:
        return _problem(400, f"format={fmt[:20]!r}: give json or csv", "format")
    cohort = await _saved(request)
    engine = request.app[keys.ENGINE]
    pks = (await _listable(request, cohort)).study_pks
    base = base_url(request)
    response = web.StreamResponse(headers={
        "Content-Type": f"{manifest.FORMATS[fmt]}; charset=utf-8",
        "Content-Disposition": f'attachment; filename="cohort-{cohort.id}.{fmt}"'})
    await response.prepare(request)
    header = {**cohort.to_json(), "dicomweb": base}
    async for chunk in manifest.manifest_chunks(fmt, header, manifest.series_rows(engine, pks, base)):
        await response.write(chunk.encode("utf-8"))
    await response.write_eof()
    return response


async def get_zip(request: web.Request) -> web.StreamResponse:
    """GET /api/cohorts/{id}/zip: ``{study}/{series}/{instance}.dcm`` for every instance; 403
    for a small cell."""
    cohort = await _saved(request)
    pks = (await _listable(request, cohort)).study_pks
    engine = request.app[keys.ENGINE]
    return await zipstream.stream_zip(request, manifest.instances_of(engine, pks), f"cohort-{cohort.id}")


def add_routes(app: web.Application) -> None:
    """Register the cohort routes on ``app``."""
    r = app.router
    r.add_post("/api/cohorts/query", query)
    r.add_post("/api/cohorts", save)
    r.add_get("/api/cohorts", list_cohorts)
    r.add_get("/api/cohorts/{id}", get_cohort)
    r.add_delete("/api/cohorts/{id}", delete_cohort)
    r.add_get("/api/cohorts/{id}/manifest", get_manifest)
    r.add_get("/api/cohorts/{id}/zip", get_zip)
