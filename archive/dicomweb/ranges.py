"""HTTP byte ranges (RFC 9110 §14) of bulk data values. PS3.18 (since the 2016 editions,
§6.5.5.2 Retrieve Bulk Data) says that with a ``Range`` header the origin server returns only
those bytes of the value (RFC 7233 §4); viewers use it to fetch parts of large pixel data."""

from __future__ import annotations

import re

from aiohttp import web

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def byte_range(header: str | None, length: int) -> tuple[int, int] | None:
    """The ``[start, end)`` a Range header asks of a value of ``length`` bytes, or None for the
    whole value: no header, another unit, several ranges or an invalid one are ignored, as
    RFC 9110 §14.2 allows. A valid range that lies beyond the value is 416 (§15.5.17)."""
    if not header:
        return None
    found = _RANGE.match(header)
    if found is None or len(header) > 200:
        return None
    first, last = found.group(1), found.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or length == 0:
            raise _not_satisfiable(length)
        return max(0, length - suffix), length
    start = int(first)
    end = int(last) + 1 if last else length
    if last and end <= start:
        return None  # last < first: invalid, so ignored (§14.1.1)
    if start >= length:
        raise _not_satisfiable(length)
    return start, min(end, length)


def content_range(span: tuple[int, int], length: int) -> str:
    return f"bytes {span[0]}-{span[1] - 1}/{length}"


def _not_satisfiable(length: int) -> web.HTTPRequestRangeNotSatisfiable:
    return web.HTTPRequestRangeNotSatisfiable(
        headers={"Content-Range": f"bytes */{length}"},
        text=f"the range lies beyond the value ({length} bytes)")


def wants_multipart(accept: list[str]) -> bool:
    """Whether the client's first choice is multipart/related (dicomweb-client's byte_range
    requests) rather than a bare body, which is what a plain Range request expects."""
    return bool(accept) and accept[0] in ("multipart/related", "multipart/*")
