"""The harmonized procedure in stored metadata: an item of ProcedureCodeSequence (0008,1032).

The code of a study can change after its instances are stored (more instances arrive, or the
operator re-applies a changed mapping table), so it is not written into each instance's stored
DICOM JSON. Instead ingest leaves a placeholder as the sequence's first item, and every read
puts the study's current code there (or removes the placeholder): one byte-string replacement
per instance, no JSON parse on the /metadata path. The stored DICOM files are not changed.
"""

from __future__ import annotations

import json
from typing import Any

PROCEDURE_CODE_SEQUENCE = "00081032"
TOKEN = "@@LN@@"
# The placeholder as it appears in the stored JSON text, anchored on the element: no value a
# sender can put in a file is encoded as this text (inside a JSON string a quote is escaped).
_PREFIX = b'"00081032":{"vr":"SQ","Value":['
_AT = _PREFIX + json.dumps(TOKEN).encode("ascii")
_ALONE = b"," + _AT + b"]}"
_FIRST = _AT + b","


def add_placeholder(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` (an instance's DICOM JSON, keys sorted) with the placeholder as the first
    item of its ProcedureCodeSequence, the sequence added if absent."""
    elem = doc.get(PROCEDURE_CODE_SEQUENCE)
    out = dict(doc)
    out[PROCEDURE_CODE_SEQUENCE] = {"vr": "SQ", "Value": [TOKEN, *(elem or {}).get("Value", [])]}
    return out if elem is not None else dict(sorted(out.items()))


def code_item(code: str, meaning: str) -> dict[str, Any]:
    """The LOINC item (PS3.16 coding scheme "LN")."""
    return {"00080100": {"vr": "SH", "Value": [code]},
            "00080102": {"vr": "SH", "Value": ["LN"]},
            "00080104": {"vr": "LO", "Value": [meaning[:64]]}}


def item_bytes(code: str | None, meaning: str | None) -> bytes | None:
    """The item as compact JSON bytes (None: the study has no code)."""
    if not code:
        return None
    return json.dumps(code_item(code, meaning or ""), separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def fill_text(doc: bytes, item: bytes | None) -> bytes:
    """Stored JSON text -> served text: the placeholder replaced by ``item`` or removed."""
    if _AT not in doc:  # stored before placeholders existed
        return doc
    if item is not None:
        return doc.replace(_AT, _PREFIX + item, 1)
    if _ALONE in doc:
        return doc.replace(_ALONE, b"", 1)
    return doc.replace(_FIRST, _PREFIX, 1)


def fill(doc: dict[str, Any], item: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parsed stored JSON -> served JSON (in place): as :func:`fill_text`."""
    elem = doc.get(PROCEDURE_CODE_SEQUENCE)
    if elem is None:
        return doc
    values = [v for v in elem.get("Value", []) if v != TOKEN]
    if item is not None:
        values.insert(0, item)
    if values:
        elem["Value"] = values
    elif TOKEN in elem.get("Value", []):
        del doc[PROCEDURE_CODE_SEQUENCE]  # the placeholder alone: the sender had no sequence
    return doc
