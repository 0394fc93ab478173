"""QIDO-RS query parameters (PS3.18 §8.3.4, §10.6.1.2) -> :class:`archive.query.model.Query`."""

from __future__ import annotations

from collections.abc import Iterable

from archive.query.attributes import BY_TAG, NESTED, Level, keyword, resolve
from archive.query.model import Query, QueryError, make_match

_LIMIT_MAX = 1_000_000
_PARAMS = {"limit", "offset", "fuzzymatching", "includefield"}


def _non_negative(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise QueryError(f"{name}: {value[:40]!r} is not a whole number") from None
    if n < 0 or n > _LIMIT_MAX:
        raise QueryError(f"{name} must be between 0 and {_LIMIT_MAX}")
    return n


def _bool(name: str, value: str) -> bool:
    if value.lower() in ("true", ""):
        return True
    if value.lower() == "false":
        return False
    raise QueryError(f"{name} must be true or false")


def _attribute_key(key: str) -> tuple[int, str]:
    """Tag of a key like ``PatientID`` / ``00100020``; nested keys (sequences) are refused."""
    if "." in key:
        raise QueryError(f"{key}: sequence matching is supported only for "
                         f"{', '.join(k for k in NESTED if not k[0].isdigit())}")
    tag = resolve(key)
    if tag is None:
        raise QueryError(f"unknown query parameter {key!r}")
    return tag, keyword(tag)


def parse_qido(level: Level, params: Iterable[tuple[str, str]],
               fixed: dict[str, str] | None = None) -> Query:
    """Build the query for a QIDO-RS request at ``level``.

    ``fixed`` holds the UIDs of the URL path (e.g. the study of ``/studies/{study}/series``).
    """
    query = Query(level)
    seen: set[int] = set()
    for key, value in params:
        if key in _PARAMS:
            if key == "limit":
                query.limit = _non_negative(key, value)
            elif key == "offset":
                query.offset = _non_negative(key, value)
            elif key == "fuzzymatching":
                query.fuzzy = _bool(key, value)
            elif key == "includefield":
                _add_includes(query, value)
            continue
        nested = NESTED.get(key)
        tag, kw = (nested.tag, key) if nested else _attribute_key(key)
        attr = nested or BY_TAG.get(tag)
        if attr is None:
            raise QueryError(f"{kw}: matching on this attribute is not supported "
                             "(it can be returned with includefield)")
        if tag in seen:
            raise QueryError(f"{kw} is given more than once")
        seen.add(tag)
        query.matches.append(make_match(attr, value, ","))
    for kw, uid in (fixed or {}).items():
        attr = next(a for a in BY_TAG.values() if a.keyword == kw)
        if attr.tag in seen:
            raise QueryError(f"{kw} is given in the path and as a query key")
        query.matches.append(make_match(attr, uid, ","))
    return query


def _add_includes(query: Query, value: str) -> None:
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if item == "all":
            query.include_all = True
            continue
        tag, _ = _attribute_key(item)
        query.includes.add(tag)
