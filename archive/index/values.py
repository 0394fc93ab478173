"""Index column values taken from an instance's DICOM JSON (the one parse at ingest)."""

from __future__ import annotations

from typing import Any

from archive.dicom.procedure import PROCEDURE_CODE_SEQUENCE
from archive.query.attributes import ATTRIBUTES, INTEGER_VRS, Level


def first_value(json: dict[str, Any], tag_hex: str) -> Any:
    elem = json.get(tag_hex)
    if not elem:
        return None
    values = elem.get("Value")
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict):  # PN
        return value.get("Alphabetic")
    return value


# The top-level elements the index writer reads of an instance's DICOM JSON (its columns, and the
# procedure codes of harmonization): only these go back from the parse worker to the writer.
INDEXED_TAGS = frozenset([a.tag_hex for a in ATTRIBUTES if not a.computed] + [PROCEDURE_CODE_SEQUENCE])


def indexed_view(json: dict[str, Any]) -> dict[str, Any]:
    """The part of an instance's DICOM JSON that :data:`INDEXED_TAGS` names."""
    return {tag: json[tag] for tag in INDEXED_TAGS if tag in json}


def column_values(json: dict[str, Any], level: Level) -> dict[str, Any]:
    """Column -> value for the non-computed attributes of ``level``."""
    out: dict[str, Any] = {}
    for attr in ATTRIBUTES:
        if attr.level != level or attr.computed:
            continue
        value = first_value(json, attr.tag_hex)
        if value is not None and attr.vr in INTEGER_VRS:
            try:
                value = int(value)
            except (TypeError, ValueError):
                value = None
        elif value is not None and not isinstance(value, str):
            value = str(value)
        if isinstance(value, str) and "\x00" in value:
            value = value.replace("\x00", "")  # PostgreSQL text cannot hold NUL (queries drop it too)
        out[attr.column] = value
    return out


def normalize_pn(value: str | None) -> str | None:
    """Upper-cased person name for case-insensitive matching (PS3.4 C.2.2.2.1 allows it)."""
    return value.upper() if value is not None else None
