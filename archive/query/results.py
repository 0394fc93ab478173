"""Query result rows as DICOM JSON (PS3.18 Annex F), with the attributes each level returns."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from archive.dicom import procedure
from archive.index.schema import instances, series
from archive.query.attributes import (
    ATTRIBUTES,
    BY_KEYWORD,
    BY_TAG,
    DEFAULT_RETURN,
    PROCEDURE_CODE,
    Attribute,
    Level,
)
from archive.query.model import Query
from archive.query.sql import TABLES

_UID_KEYWORDS = {Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID",
                 Level.INSTANCE: "SOPInstanceUID"}


def element(attr: Attribute, value: Any) -> dict[str, Any]:
    """One attribute as DICOM JSON; None or "" gives an empty (zero-length) attribute."""
    if value is None or value == "":
        return {"vr": attr.vr}
    if attr.vr == "PN":
        return {"vr": "PN", "Value": [{"Alphabetic": value}]}
    if attr.keyword == "ModalitiesInStudy":
        return {"vr": "CS", "Value": value.split("\\")}
    return {"vr": attr.vr, "Value": [value]}


def procedure_sequence(row: Any) -> dict[str, Any] | None:
    """ProcedureCodeSequence of a study row: the harmonized LOINC item and the sender's items."""
    items: list[dict[str, Any]] = []
    if row.studies__loinc_code:
        items.append(procedure.code_item(row.studies__loinc_code, row.studies__loinc_name or ""))
    if row.studies__procedure_codes:
        items.extend(json.loads(row.studies__procedure_codes))
    return {"vr": "SQ", "Value": items} if items else None


def return_attributes(query: Query) -> list[Attribute]:
    """Default attributes of the level, the matched ones, and includefield (index columns)."""
    wanted: dict[int, Attribute] = {}
    levels = [lvl for lvl in (Level.STUDY, Level.SERIES, Level.INSTANCE) if lvl <= query.level]
    if query.level == Level.PATIENT:
        levels = []
        for a in ATTRIBUTES:
            if a.level == Level.PATIENT:
                wanted[a.tag] = a
    for lvl in levels:
        for kw in (*DEFAULT_RETURN[lvl], _UID_KEYWORDS[lvl]):
            wanted[BY_KEYWORD[kw].tag] = BY_KEYWORD[kw]
    for m in query.matches:
        if m.attribute.level <= query.level or m.attribute.keyword == "ModalitiesInStudy":
            wanted[m.attribute.tag] = m.attribute
    for a in ATTRIBUTES:
        if a.tag in query.includes and a.level <= query.level or (
                query.include_all and a.level <= query.level):
            if a.keyword == "NumberOfSeriesRelatedInstances" and query.level != Level.SERIES:
                continue
            wanted[a.tag] = a
    if _returns_procedure_code(query):
        wanted[PROCEDURE_CODE.tag] = PROCEDURE_CODE
    return sorted(wanted.values(), key=lambda a: a.tag)


def _returns_procedure_code(query: Query) -> bool:
    """The study's ProcedureCodeSequence is in every study result, and in series and instance
    results when includefield asks for it: study attributes may be included at lower levels
    (PS3.18 §10.6.3, Tables 10.6.3-4 and -5). A match on it returns it too (above)."""
    if query.level < Level.STUDY:
        return False
    return query.level == Level.STUDY or query.include_all or PROCEDURE_CODE.tag in query.includes


def _value(row: Any, attr: Attribute) -> Any:
    table = TABLES[attr.level]
    return getattr(row, f"{table.name}__{attr.column}")


def retrieve_url(base: str, row: Any, level: Level) -> str:
    url = f"{base}/studies/{row.studies__study_uid}"
    if level >= Level.SERIES:
        url += f"/series/{row.series__series_uid}"
    if level >= Level.INSTANCE:
        url += f"/instances/{row.instances__sop_uid}"
    return url


def to_json(rows: Sequence[Any], query: Query, base: str,
            extra: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """DICOM JSON objects for ``rows`` of :func:`archive.query.sql.build_select`."""
    attrs = return_attributes(query)
    out: list[dict[str, Any]] = []
    pk_name = f"{TABLES[query.level].name}__pk"
    with_procedures = any(a is PROCEDURE_CODE for a in attrs)
    for row in rows:
        obj: dict[str, Any] = {}
        for a in attrs:
            if a.keyword == "NumberOfSeriesRelatedInstances" and query.level != Level.SERIES:
                continue
            if a is PROCEDURE_CODE:
                continue  # the sequence, below
            obj[a.tag_hex] = element(a, _value(row, a))
        if with_procedures:  # every result row has its study's columns (sql._result_rows)
            procedures = procedure_sequence(row)
            if procedures is not None:
                obj[PROCEDURE_CODE.tag_hex] = procedures
        if query.level >= Level.STUDY:
            obj["00081190"] = {"vr": "UR", "Value": [retrieve_url(base, row, query.level)]}
            # InstanceAvailability (PS3.18 Tables 10.6.3-3..5): every stored file is on line.
            obj["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
        if extra:
            for key, value in extra.get(getattr(row, pk_name), {}).items():
                obj.setdefault(key, value)
        out.append(dict(sorted(obj.items())))
    return out


def _stored_tags(query: Query) -> set[str]:
    """includefield tags that are not index columns of the result's level (or above): served
    from the stored JSON of the row's first instance."""
    out = set()
    for t in query.includes:
        if t == PROCEDURE_CODE.tag:
            # The study's, from the index (to_json): an instance's stored JSON holds only a
            # placeholder for the harmonized item (archive.dicom.procedure).
            continue
        attr = BY_TAG.get(t)
        if attr is None or (attr.level > query.level and not attr.computed):
            out.add(f"{t:08X}")
    return out


async def extra_attributes(conn: AsyncConnection, query: Query,
                           rows: Sequence[Any]) -> dict[int, dict[str, Any]]:
    """For each result row, the requested non-index attributes, from its first instance's JSON."""
    tags = _stored_tags(query)
    if not tags or not rows or query.level == Level.PATIENT:
        return {}
    pk_name = f"{TABLES[query.level].name}__pk"
    pks = [getattr(r, pk_name) for r in rows]
    if query.level == Level.INSTANCE:
        stmt = select(instances.c.pk.label("owner"), instances.c.meta_json).where(instances.c.pk.in_(pks))
    else:
        owner = series.c.study_pk if query.level == Level.STUDY else instances.c.series_pk
        first = (select(owner.label("owner"), func.min(instances.c.pk).label("ipk"))
                 .select_from(instances.join(series, instances.c.series_pk == series.c.pk))
                 .where(owner.in_(pks)).group_by(owner).subquery())
        stmt = select(first.c.owner, instances.c.meta_json).join(first, instances.c.pk == first.c.ipk)
    result: dict[int, dict[str, Any]] = {}
    for owner_pk, blob in (await conn.execute(stmt)).all():
        doc = procedure.fill(json.loads(zlib.decompress(blob)))
        result[owner_pk] = {t: doc[t] for t in tags if t in doc}
    return result
