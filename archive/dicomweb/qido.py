"""QIDO-RS: Search Transaction (PS3.18 §10.6) over the shared query model."""

from __future__ import annotations

from aiohttp import web

from archive import keys
from archive.auth import visibility
from archive.dicomweb.media import base_url, json_response, parse_accept, uid_param, warning_header
from archive.query.attributes import Level
from archive.query.model import QueryError
from archive.query.params import parse_qido
from archive.query.run import QueryTimeout, search

_JSON_TYPES = ("application/dicom+json", "application/json", "*/*", "application/*")


def _check_accept(request: web.Request) -> None:
    if not any(r.type in _JSON_TYPES for r in parse_accept(request.headers.get("Accept"))):
        raise web.HTTPNotAcceptable(text="QIDO-RS responses are application/dicom+json")


async def _search(request: web.Request, level: Level, fixed: dict[str, str]) -> web.Response:
    _check_accept(request)
    try:
        query = parse_qido(level, request.query.items(), fixed)
    except QueryError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    query.visible = visibility(request)
    maximum = request.app[keys.CONFIG].qido.max_results
    limit = min(query.limit, maximum) if query.limit is not None else maximum
    timeout = request.app[keys.CONFIG].qido.timeout
    try:
        found = await search(request.app[keys.ENGINE], query, limit, base_url(request), timeout)
    except QueryTimeout:
        raise web.HTTPServiceUnavailable(
            text=f"the search took longer than the server's limit of {timeout:g} s and was stopped; "
                 "narrow it (more matching keys, a smaller limit)") from None
    headers: dict[str, str] = {}
    if found.more and (query.limit is None or query.limit > maximum):
        # PS3.18 §10.6.3.3.1: the result was cut at the server's maximum.
        headers["Warning"] = warning_header(
            request, "The number of results exceeded the maximum supported by the server. "
                     "Additional results can be requested.")
    return json_response(found.docs, request, 200, headers)


async def search_studies(request: web.Request) -> web.Response:
    return await _search(request, Level.STUDY, {})


async def search_series(request: web.Request) -> web.Response:
    fixed = {}
    if "study" in request.match_info:
        fixed["StudyInstanceUID"] = uid_param(request, "study")
    return await _search(request, Level.SERIES, fixed)


async def search_instances(request: web.Request) -> web.Response:
    fixed = {}
    if "study" in request.match_info:
        fixed["StudyInstanceUID"] = uid_param(request, "study")
    if "series" in request.match_info:
        fixed["SeriesInstanceUID"] = uid_param(request, "series")
    return await _search(request, Level.INSTANCE, fixed)
