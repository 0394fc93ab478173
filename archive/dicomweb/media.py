"""Media types and request helpers shared by the DICOMweb handlers (PS3.18 §8.7, §8.3.3)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from archive import keys
from archive.dicom.jsonmodel import BASE_URL_TOKEN
from archive.dicom.uids import is_valid_uid

DICOM_JSON = "application/dicom+json"


@dataclass
class MediaRange:
    type: str  # lower-cased "type/subtype"
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts, buf, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def parse_media_type(text: str) -> MediaRange:
    pieces = _split_outside_quotes(text, ";")
    mr = MediaRange(pieces[0].strip().lower())
    for piece in pieces[1:]:
        name, _, value = piece.partition("=")
        name = name.strip().lower()
        value = value.strip().strip('"')
        if name == "q":
            try:
                mr.q = float(value)
            except ValueError:
                mr.q = 0.0
        elif name:
            mr.params[name] = value
    return mr


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges of an Accept header, best first; an absent header accepts anything."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    if len(header) > 4096:
        raise web.HTTPBadRequest(text="Accept header too long")
    ranges = [parse_media_type(p) for p in _split_outside_quotes(header, ",") if p.strip()]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)


def base_url(request: web.Request) -> str:
    """The DICOMweb root as the client sees it (``[http] base_url`` overrides)."""
    configured = request.app[keys.CONFIG].http.base_url
    if configured:
        return configured.rstrip("/")
    return f"{request.scheme}://{request.host}/dicom-web"


def uid_param(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not is_valid_uid(value):
        shown = value if len(value) <= 70 else value[:67] + "..."
        raise web.HTTPBadRequest(text=f"{name}: {shown!r} is not a valid UID")
    return value


def json_response(data: Any, request: web.Request, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    text = text.replace(BASE_URL_TOKEN, base_url(request))
    # No charset parameter: DICOM JSON is always UTF-8, and clients (dicomweb-client's STOW-RS)
    # compare the media type exactly.
    return web.Response(body=text.encode("utf-8"), status=status, content_type=DICOM_JSON,
                        headers=headers)


def warning_header(request: web.Request, message: str) -> str:
    """A Warning header value (RFC 7234 §5.5, as PS3.18 §8.5 uses it)."""
    safe = message.replace('"', "'").replace("\r", " ").replace("\n", " ")[:300]
    return f'299 {request.host or "imaging-archive"}: "{safe}"'
