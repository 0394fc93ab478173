"""C-FIND identifiers (PS3.4 C.4.1) -> :class:`archive.query.model.Query`, and matches back to
identifiers. The matching itself is the shared query model's; only the parsing is DIMSE's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from archive.query.attributes import BY_TAG, Level
from archive.query.model import Query, QueryError, make_match

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005

# Information models (PS3.4 C.6): the levels each one has.
PATIENT_ROOT = "PATIENT"
STUDY_ROOT = "STUDY"
_LEVELS = {"PATIENT": Level.PATIENT, "STUDY": Level.STUDY, "SERIES": Level.SERIES,
           "IMAGE": Level.INSTANCE}
_MODEL_LEVELS = {PATIENT_ROOT: set(_LEVELS), STUDY_ROOT: {"STUDY", "SERIES", "IMAGE"}}


@dataclass
class FindRequest:
    query: Query
    level_name: str  # as the identifier said it: PATIENT, STUDY, SERIES or IMAGE
    requested: list[int] = field(default_factory=list)  # return keys, in identifier order


def _text(elem: DataElement) -> str:
    """The element's value as the string PS3.4 matching works on (``\\`` between values)."""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def parse_identifier(ds: Dataset, model: str) -> FindRequest:
    """The query an identifier asks for under ``model`` (PATIENT_ROOT or STUDY_ROOT)."""
    level_name = str(ds.get("QueryRetrieveLevel", "")).strip().upper()
    if level_name not in _MODEL_LEVELS[model]:
        raise QueryError(f"QueryRetrieveLevel {level_name!r} is not a level of the "
                         f"{model.lower()} root information model")
    req = FindRequest(Query(_LEVELS[level_name]), level_name)
    for elem in ds:
        tag = int(elem.tag)
        if tag in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET) or tag >> 16 in (0, 2):
            continue
        req.requested.append(tag)
        req.query.includes.add(tag)
        attr = BY_TAG.get(tag)
        if elem.VR == "SQ" or attr is None:
            continue  # a return key: sequence and non-index attributes are not matched
        text = _text(elem)
        if text:
            req.query.matches.append(make_match(attr, text, "\\"))
    return req


def _empty(tag: int) -> DataElement:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        vr = "UN"
    if " or " in vr:
        vr = vr.split(" or ")[0]
    return DataElement(tag, vr, [] if vr == "SQ" else None)


def to_identifier(doc: dict[str, Any], req: FindRequest, ae_title: str) -> Dataset:
    """A C-FIND response identifier: exactly the requested keys, values from ``doc``."""
    wanted = {f"{t:08X}": doc[f"{t:08X}"] for t in req.requested
              if f"{t:08X}" in doc and "BulkDataURI" not in doc[f"{t:08X}"]}
    ds = Dataset.from_json(wanted)
    for tag in req.requested:
        if tag not in ds:
            ds.add(_empty(tag))
    ds.SpecificCharacterSet = "ISO_IR 192"  # values come from the UTF-8 index
    ds.QueryRetrieveLevel = req.level_name
    ds.RetrieveAETitle = ae_title  # where the matches can be retrieved from (C.4.1.1.3.2)
    return ds
