"""Cohort SQL: the studies a :class:`CohortFilters` selects, their counts, facets and a page.

Every statement is built by :func:`cohort_select`, the one place that joins the tables and
applies the filters, over the patients in the caller's release states (archive.auth: sequestered,
quarantined and pending patients are hidden from most callers). DICOM filters get their SQL from
:func:`archive.query.sql.where_clause`, the matching rules of QIDO-RS and C-FIND; clinical
filters join ``cases`` on the patient's PatientID (MIDRC's case submitter_id): a study whose
patient has no case matches no clinical filter.

Counts and facets are aggregates of one statement over the cohort, materialized once as a CTE,
so the filters are evaluated once however many facets are asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from archive.auth import ALL, PUBLIC, Visibility
from archive.cohorts.filters import AGE_OVER_89, CohortFilters, Range
from archive.index.schema import cases, patients, series, studies
from archive.query.attributes import Level
from archive.query.model import Query
from archive.query.run import deadline
from archive.query.sql import where_clause
from archive.release.sequester import AGE_BAND_STARTS, AGE_BANDS, OVER_89_BAND, UNKNOWN, is_small_cell

# The age_group facet's values, in order: the sequestration rule's CDC age bands (one definition).
AGE_GROUPS = AGE_BANDS
FACETS = ("modality", "loinc", "body_region", "sex", "age_group", "race", "ethnicity",
          "covid19_positive", "study_year", "manufacturer")
# Facets given only when asked for by name ("facets": [...]): the site (InstitutionName, at series
# level like manufacturer) and the patients' release state (only the states the caller may see).
EXTRA_FACETS = ("institution", "release_state")
ALL_FACETS = FACETS + EXTRA_FACETS
_TOTALS = "#totals"


def _between(col: Any, bounds: Range) -> ColumnElement[bool]:
    parts = []
    if bounds.min is not None:
        parts.append(col >= bounds.min)
    if bounds.max is not None:
        parts.append(col <= bounds.max)
    return and_(*parts)


def _over_89() -> ColumnElement[bool]:
    return cases.c.age_at_index_gt89 == "Yes"


def _age_condition(bounds: Range) -> ColumnElement[bool]:
    """An age range; a case flagged over 89 is 90 (its age_at_index, if any, is a capped 89)."""
    numeric = and_(or_(cases.c.age_at_index_gt89.is_(None), ~_over_89()),
                   _between(cases.c.age_at_index, bounds))
    if bounds.max is not None and bounds.max < AGE_OVER_89:
        return numeric
    return or_(numeric, _over_89())


def dicom_conditions(filters: CohortFilters) -> list[ColumnElement[bool]]:
    """The DICOM filters as the query model's SQL: plain matches as one study-level Query, each
    group of wildcard alternatives as an OR of one-match queries."""
    conds = where_clause(filters.study_query())
    for group in filters.dicom:
        if len(group) > 1:
            conds.append(or_(*(and_(*where_clause(Query(Level.STUDY, [m], visible=ALL))) for m in group)))
    return conds


def filter_conditions(filters: CohortFilters) -> list[ColumnElement[bool]]:
    conds = dicom_conditions(filters)
    if filters.body_region:
        conds.append(studies.c.loinc_region.in_(filters.body_region))
    for name, values in filters.enums.items():
        conds.append(cases.c[name].in_(values))
    if filters.age is not None:
        conds.append(_age_condition(filters.age))
    for name, flag in filters.booleans.items():
        conds.append(cases.c[name].is_(flag))
    if filters.images is not None:
        conds.append(_between(studies.c.num_instances, filters.images))
    if filters.series is not None:
        conds.append(_between(studies.c.num_series, filters.series))
    return conds


def cohort_select(filters: CohortFilters, columns: Sequence[Any],
                  visible: Visibility = PUBLIC) -> Select[Any]:
    """SELECT ``columns`` FROM the cohort's studies: studies ⋈ patients ⟕ cases (an inner join
    when a clinical filter is given), WHERE the patient is ``visible`` AND the filters. One row
    per study."""
    frm = studies.join(patients, studies.c.patient_pk == patients.c.pk).join(
        cases, cases.c.submitter_id == patients.c.patient_id, isouter=not filters.clinical)
    access = patients.c.release_state.in_(sorted(visible.states))  # the caller's release states
    return select(*columns).select_from(frm).where(access, *filter_conditions(filters))


@dataclass
class Counts:
    patients: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)

    def small(self, minimum: int) -> bool:
        """True when the study or the patient count is a small cell (1 to ``minimum - 1``): a
        list of the studies would tell it (by its length, or its PatientIDs)."""
        return is_small_cell(self.studies, minimum) or is_small_cell(self.patients, minimum)


@dataclass
class CohortResult:
    filters: dict[str, Any]
    counts: Counts
    facets: dict[str, list[dict[str, Any]]] | None
    studies: list[dict[str, Any]]
    limit: int
    offset: int
    withheld: bool = False  # the page was not read: the cohort is a small cell (run_query)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"filters": self.filters, "counts": self.counts.to_json()}
        if self.facets is not None:
            out["facets"] = self.facets
        # A withheld page has no next one: the flag, asked at every offset, would tell the count.
        more = not self.withheld and self.offset + len(self.studies) < self.counts.studies
        out.update(studies=self.studies, limit=self.limit, offset=self.offset, more=more,
                   withheld=self.withheld)
        return out


def _age_group() -> ColumnElement[str]:
    """:func:`archive.release.sequester.age_band` in SQL: a band holds the ages below the next
    band's start; the last one is open above."""
    age = cases.c.age_at_index
    whens: list[tuple[Any, str]] = [(_over_89(), OVER_89_BAND), (age.is_(None), UNKNOWN)]
    uppers = [start for start, _ in AGE_BAND_STARTS[1:]]
    whens += [(age < upper, name) for upper, (_, name) in zip(uppers, AGE_BAND_STARTS, strict=False)]
    return case(*whens, else_=AGE_BAND_STARTS[-1][1])


def wanted_facets(facets: bool | Sequence[str]) -> tuple[str, ...]:
    """The facets to compute: True is :data:`FACETS`, False none, a sequence those named (of
    :data:`ALL_FACETS`)."""
    if isinstance(facets, bool):
        return FACETS if facets else ()
    return tuple(name for name in ALL_FACETS if name in facets)


def _statistics_statement(filters: CohortFilters, visible: Visibility,
                          facets: bool | Sequence[str]) -> Select[Any]:
    """Totals and the ``facets`` asked for (see :func:`wanted_facets`), as one UNION ALL of GROUP BYs
    over the materialized cohort: rows of (facet, value, name, studies, patients, series, instances,
    bytes)."""
    wanted = wanted_facets(facets)
    cohort = cohort_select(filters, [
        studies.c.pk.label("study_pk"), studies.c.patient_pk, studies.c.num_series,
        studies.c.num_instances, studies.c.size, studies.c.loinc_code, studies.c.loinc_name,
        studies.c.loinc_region, func.substr(studies.c.study_date, 1, 4).label("year"),
        cases.c.sex, cases.c.race, cases.c.ethnicity, cases.c.covid19_positive,
        _age_group().label("age_group"), patients.c.release_state], visible).cte("cohort")
    if wanted:
        cohort = cohort.prefix_with("MATERIALIZED")  # used by every member below
    c = cohort.c
    totals = select(literal(_TOTALS), cast(null(), String), cast(null(), String),
                    func.count(), func.count(func.distinct(c.patient_pk)),
                    func.coalesce(func.sum(c.num_series), 0), func.coalesce(func.sum(c.num_instances), 0),
                    func.coalesce(func.sum(c.size), 0)).select_from(cohort)
    if not wanted:
        return totals
    members: list[Select[Any]] = [totals]

    def facet(name: str, value: Any, label: Any = None, of: Any = cohort) -> None:
        if name not in wanted:
            return
        # Over the cohort a row is a study; over cohort_series a study may have several rows.
        n_studies = func.count() if of is cohort else func.count(func.distinct(of.c.study_pk))
        group = [value] if label is None else [value, label]
        members.append(select(literal(name), cast(value, String),
                              cast(null(), String) if label is None else label,
                              n_studies, func.count(func.distinct(of.c.patient_pk)),
                              null(), null(), null()).select_from(of).group_by(*group))

    # Series-level attributes: a study counts once under each value its series have. The join
    # is materialized on its own: grouped directly, SQLite may scan every series by modality
    # (for the order) and probe the cohort, instead of probing the series of the cohort's studies.
    joined = select(c.study_pk, c.patient_pk, series.c.modality, series.c.manufacturer,
                    series.c.institution_name).select_from(
        cohort.join(series, series.c.study_pk == c.study_pk)).cte("cohort_series").prefix_with("MATERIALIZED")
    facet("modality", joined.c.modality, of=joined)
    facet("loinc", c.loinc_code, c.loinc_name)
    facet("body_region", c.loinc_region)
    for name in ("sex", "age_group", "race", "ethnicity", "covid19_positive"):
        facet(name, c[name])
    facet("study_year", c.year)
    facet("manufacturer", joined.c.manufacturer, of=joined)
    facet("institution", joined.c.institution_name, of=joined)
    facet("release_state", c.release_state)
    return union_all(*members)  # type: ignore[return-value]


def _facet_order(name: str, entry: dict[str, Any]) -> tuple[Any, ...]:
    if name == "age_group":
        return (AGE_GROUPS.index(entry["value"]),)
    if name == "study_year":
        return (entry["value"] is None, entry["value"] or "")
    return (-entry["studies"], entry["value"] is None, entry["value"] or "")


async def statistics(conn: AsyncConnection, filters: CohortFilters, visible: Visibility = PUBLIC,
                     facets: bool | Sequence[str] = True
                     ) -> tuple[Counts, dict[str, list[dict[str, Any]]] | None]:
    """The cohort's counts and (with ``facets``: :func:`wanted_facets`) facets: value -> studies
    and patients, most studies first (age groups in band order, years in order); null is "no
    value"."""
    counts = Counts()
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in wanted_facets(facets)}
    for row in (await conn.execute(_statistics_statement(filters, visible, facets))).all():
        name, value, label, n_studies, n_patients, n_series, n_instances, n_bytes = row
        if name == _TOTALS:
            counts = Counts(int(n_patients), int(n_studies), int(n_series), int(n_instances), int(n_bytes))
            continue
        entry: dict[str, Any] = {"value": value}
        if name == "loinc":
            entry["name"] = label
        entry.update(studies=n_studies, patients=n_patients)
        found[name].append(entry)
    if not facets:
        return counts, None
    return counts, {name: sorted(entries, key=lambda e, n=name: _facet_order(n, e))
                    for name, entries in found.items()}


_PAGE_COLUMNS = (studies.c.study_uid, patients.c.patient_id, studies.c.study_date,
                 studies.c.study_description, studies.c.modalities, studies.c.loinc_code,
                 studies.c.loinc_name, studies.c.loinc_region, studies.c.num_series,
                 studies.c.num_instances, studies.c.size, patients.c.release_state)


def study_url(base_url: str, study_uid: str) -> str:
    return f"{base_url}/studies/{study_uid}"


async def study_page(conn: AsyncConnection, filters: CohortFilters, limit: int, offset: int,
                     base_url: str, visible: Visibility = PUBLIC) -> list[dict[str, Any]]:
    """A page of the cohort's studies in a stable order (as stored), with their DICOMweb URLs."""
    stmt = cohort_select(filters, _PAGE_COLUMNS, visible).order_by(studies.c.pk).limit(limit).offset(offset)
    out = []
    for r in (await conn.execute(stmt)).all():
        url = study_url(base_url, r.study_uid)
        out.append({"StudyInstanceUID": r.study_uid, "PatientID": r.patient_id,
                    "StudyDate": r.study_date, "StudyDescription": r.study_description,
                    "ModalitiesInStudy": [m for m in (r.modalities or "").split("\\") if m],
                    "loinc_code": r.loinc_code, "loinc_name": r.loinc_name,
                    "body_region": r.loinc_region, "series": r.num_series,
                    "instances": r.num_instances, "bytes": r.size,
                    "url": url, "thumbnail": url + "/thumbnail",
                    "release_state": r.release_state})
    return out


async def run_query(engine: AsyncEngine, filters: CohortFilters, base_url: str, *, limit: int = 100,
                    offset: int = 0, facets: bool | Sequence[str] = True, visible: Visibility = PUBLIC,
                    timeout: float = 0, min_cell: int | None = None) -> CohortResult:
    """Counts, facets and one page of studies, read in one transaction (one snapshot), within
    ``timeout`` seconds (0: none; else QueryTimeout, as for QIDO-RS). With ``min_cell`` (the
    caller's small-cell minimum) the page of a cohort that is a small cell (:meth:`Counts.small`)
    is withheld: no study, ``more`` false."""
    async with engine.connect() as conn, deadline(conn, timeout):
        counts, found = await statistics(conn, filters, visible, facets)
        withheld = min_cell is not None and counts.small(min_cell)
        page = [] if withheld or not limit else await study_page(conn, filters, limit, offset, base_url,
                                                                 visible)
    return CohortResult(filters.to_json(), counts, found, page, limit, offset, withheld)


async def cohort_counts(engine: AsyncEngine, filters: CohortFilters, visible: Visibility = PUBLIC) -> Counts:
    async with engine.connect() as conn:
        counts, _ = await statistics(conn, filters, visible, facets=False)
    return counts


@dataclass(frozen=True)
class Members:
    """A cohort's studies (pks, in the order of :func:`study_page`) and its number of patients,
    from one read: what a manifest or zip will list, and whether that is a small cell."""

    study_pks: list[int]
    patients: int

    def small(self, minimum: int) -> bool:
        return Counts(self.patients, len(self.study_pks)).small(minimum)


async def members(engine: AsyncEngine, filters: CohortFilters, visible: Visibility = PUBLIC) -> Members:
    stmt = cohort_select(filters, [studies.c.pk, studies.c.patient_pk], visible).order_by(studies.c.pk)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return Members([r.pk for r in rows], len({r.patient_pk for r in rows}))


async def study_pks(engine: AsyncEngine, filters: CohortFilters, visible: Visibility = PUBLIC) -> list[int]:
    """The pks of the cohort's studies, in the order of :func:`study_page` (for the manifest and
    the zip, which then read the cohort study by study, in chunks)."""
    return (await members(engine, filters, visible)).study_pks
