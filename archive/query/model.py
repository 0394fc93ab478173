"""The query object shared by QIDO-RS, C-FIND and cohort filters (PS3.4 C.2.2.2 matching)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from archive.auth import PUBLIC, Visibility
from archive.dicom.uids import is_valid_uid
from archive.query.attributes import INTEGER_VRS, Attribute, Level


class QueryError(ValueError):
    """A query key or value that cannot be matched; the message names the key."""


class MatchKind(Enum):
    UNIVERSAL = "universal"  # empty value: return the attribute, match everything (C.2.2.2.3)
    SINGLE = "single"  # C.2.2.2.1
    LIST = "list"  # UID list (C.2.2.2.2), also CS lists
    WILDCARD = "wildcard"  # * and ? (C.2.2.2.4)
    RANGE = "range"  # dates and times (C.2.2.2.5)


@dataclass(frozen=True)
class Match:
    attribute: Attribute
    kind: MatchKind
    values: tuple[str, ...] = ()
    low: str | None = None
    high: str | None = None


@dataclass
class Query:
    level: Level
    matches: list[Match] = field(default_factory=list)
    includes: set[int] = field(default_factory=set)  # extra tags to return
    include_all: bool = False
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    # Release states of the patients the caller may see (archive.auth): never more than asked.
    visible: Visibility = PUBLIC


_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?$")
_DT = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")
_CHECKS = {"DA": _DA, "TM": _TM, "DT": _DT}
_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT", "AS"})


def _check_temporal(attr: Attribute, value: str) -> str:
    # Colons in times (old ACR-NEMA style, still sent by some clients) are accepted and dropped.
    v = value.replace(":", "") if attr.vr == "TM" else value
    if not _CHECKS[attr.vr].match(v):
        raise QueryError(f"{attr.keyword}: {value!r} is not a valid {attr.vr} value")
    return v


def make_match(attr: Attribute, raw: str, list_separator: str) -> Match:
    """Classify ``raw`` per PS3.4 C.2.2.2 for ``attr`` and validate it."""
    value = raw.strip(" ") if attr.vr not in ("LT", "ST", "UT") else raw
    if value == "" or value == "*":
        return Match(attr, MatchKind.UNIVERSAL)
    vr = attr.vr
    if vr == "UI":
        uids = tuple(v.strip() for v in value.split(list_separator))
        for uid in uids:
            if not is_valid_uid(uid):
                raise QueryError(f"{attr.keyword}: {uid[:70]!r} is not a valid UID")
        return Match(attr, MatchKind.LIST if len(uids) > 1 else MatchKind.SINGLE, uids)
    if vr in _CHECKS:
        if "-" in value and not (vr == "DT" and _DT.match(value)):
            low, _, high = value.partition("-")
            if not low and not high:
                raise QueryError(f"{attr.keyword}: a range needs at least one bound")
            return Match(attr, MatchKind.RANGE,
                         low=_check_temporal(attr, low) if low else None,
                         high=_check_temporal(attr, high) if high else None)
        return Match(attr, MatchKind.SINGLE, (_check_temporal(attr, value),))
    if vr in INTEGER_VRS:
        try:
            return Match(attr, MatchKind.SINGLE, (str(int(value)),))
        except ValueError:
            raise QueryError(f"{attr.keyword}: {value!r} is not an integer") from None
    if vr == "CS" and list_separator in value:
        return Match(attr, MatchKind.LIST, tuple(v.strip() for v in value.split(list_separator)))
    if ("*" in value or "?" in value) and vr in _WILDCARD_VRS:
        return Match(attr, MatchKind.WILDCARD, (value,))
    return Match(attr, MatchKind.SINGLE, (value,))
