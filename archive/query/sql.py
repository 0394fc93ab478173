"""A :class:`Query` as one SQL statement over the index tables.

Attributes of the result's level and of the levels above it are matched on joined columns;
attributes of lower levels (e.g. Modality in a study search, and ModalitiesInStudy) by EXISTS
over the child tables, so a study appears once however many of its series match.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, func, literal, select, true

from archive.index.schema import instances, patients, series, studies
from archive.query.attributes import INTEGER_VRS, Attribute, Level
from archive.query.model import Match, MatchKind, Query

TABLES = {Level.PATIENT: patients, Level.STUDY: studies, Level.SERIES: series,
          Level.INSTANCE: instances}
_PN_NORM = {"patient_name": "patient_name_norm",
            "referring_physician_name": "referring_physician_name_norm"}


def _like_pattern(value: str) -> str:
    """PS3.4 wildcards to a LIKE pattern with ``\\`` as the escape character."""
    out = []
    for ch in value:
        if ch in "\\%_":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _column(attr: Attribute) -> Any:
    if attr.keyword == "ModalitiesInStudy":
        return series.c.modality
    table = TABLES[attr.level]
    return table.c[_PN_NORM.get(attr.column, attr.column)]


def _fuzzy_pn(col: Any, value: str) -> ColumnElement[bool]:
    """Every word of the query starts some word of the name (case-insensitive)."""
    words = " " + func.replace(func.replace(col, "^", " "), "=", " ")
    tokens = [t for t in value.upper().replace("^", " ").replace("*", " ").split() if t]
    return and_(*(words.like(f"% {_like_pattern(t)}%", escape="\\") for t in tokens))


def condition(m: Match, fuzzy: bool, col: Any = None) -> ColumnElement[bool]:
    """SQL for one match on its own column (or on ``col``)."""
    attr = m.attribute
    col = _column(attr) if col is None else col
    pn = attr.vr == "PN"
    values = [v.upper() for v in m.values] if pn else list(m.values)
    if m.kind is MatchKind.UNIVERSAL:
        return true()
    if pn and fuzzy and m.kind in (MatchKind.SINGLE, MatchKind.WILDCARD):
        return _fuzzy_pn(col, m.values[0])
    if m.kind is MatchKind.SINGLE:
        if attr.vr in INTEGER_VRS:
            return col == int(values[0])
        return col == values[0]
    if m.kind is MatchKind.LIST:
        return col.in_(values)
    if m.kind is MatchKind.WILDCARD:
        return col.like(_like_pattern(values[0]), escape="\\")
    parts = []
    if m.low is not None:
        parts.append(col >= m.low)
    if m.high is not None:
        # A partial upper bound ("1200", "2020") covers everything it is a prefix of.
        parts.append(col <= (m.high + "~" if attr.vr in ("TM", "DT") else m.high))
    return and_(*parts)


def _parent_joins(level: Level) -> Any:
    """FROM clause: the result table joined to its ancestors."""
    frm: Any = TABLES[level]
    if level >= Level.INSTANCE:
        frm = frm.join(series, instances.c.series_pk == series.c.pk)
    if level >= Level.SERIES:
        frm = frm.join(studies, series.c.study_pk == studies.c.pk)
    if level >= Level.STUDY:
        frm = frm.join(patients, studies.c.patient_pk == patients.c.pk)
    return frm


def _descendant_condition(level: Level, m: Match, fuzzy: bool) -> ColumnElement[bool]:
    """EXISTS over the descendants of the result row for a match on a lower level."""
    target = Level.SERIES if m.attribute.keyword == "ModalitiesInStudy" else m.attribute.level
    links = {Level.STUDY: (studies, studies.c.patient_pk, patients.c.pk),
             Level.SERIES: (series, series.c.study_pk, studies.c.pk),
             Level.INSTANCE: (instances, instances.c.series_pk, series.c.pk)}
    child = Level(level + 1)
    table, fk, parent_pk = links[child]
    frm: Any = table
    for lvl in range(child + 1, target + 1):
        t, t_fk, t_parent = links[Level(lvl)]
        frm = frm.join(t, t_fk == t_parent)
    sub = select(literal(1)).select_from(frm).where(fk == parent_pk)
    return exists(sub.where(condition(m, fuzzy)))


def _study_modalities_condition(m: Match, fuzzy: bool) -> ColumnElement[bool]:
    """ModalitiesInStudy below the study level: some series of the row's study has the modality
    (not only the row's own series)."""
    other = series.alias("study_series")
    sub = select(literal(1)).select_from(other).where(other.c.study_pk == studies.c.pk)
    return exists(sub.where(condition(m, fuzzy, other.c.modality)))


def where_clause(query: Query) -> list[ColumnElement[bool]]:
    """The query's matches, and the release states the caller may see (patients is always in
    the FROM clause of a result row: the table itself, or joined by :func:`_parent_joins`)."""
    conds: list[ColumnElement[bool]] = [patients.c.release_state.in_(sorted(query.visible.states))]
    for m in query.matches:
        if m.kind is MatchKind.UNIVERSAL:
            continue
        if m.attribute.keyword == "ModalitiesInStudy" and query.level > Level.STUDY:
            conds.append(_study_modalities_condition(m, query.fuzzy))
            continue
        level = Level.SERIES if m.attribute.keyword == "ModalitiesInStudy" else m.attribute.level
        if level > query.level:
            conds.append(_descendant_condition(query.level, m, query.fuzzy))
        else:
            conds.append(condition(m, query.fuzzy))
    return conds


def build_select(query: Query, limit: int) -> Select[Any]:
    """Rows of the result level with every column of it and its ancestors, in stable order."""
    table = TABLES[query.level]
    cols: list[Any] = []
    for lvl in range(Level.PATIENT, query.level + 1):
        t = TABLES[Level(lvl)]
        cols.extend(c.label(f"{t.name}__{c.name}") for c in t.c
                    if c.name not in ("meta_json", "bulk", "pixel"))
    stmt = select(*cols).select_from(_parent_joins(query.level)).where(*where_clause(query))
    return stmt.order_by(table.c.pk).limit(limit).offset(query.offset)

