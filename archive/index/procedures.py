"""Placing studies on harmonized procedures (archive.harmonize) inside an index transaction.

The same rule at ingest (every batch re-places the studies it touched, as their modalities and
image counts grow) and in ``imaging-archive harmonize apply`` (all studies, after a mapping
change): a study's modalities, StudyDescription, first BodyPartExamined and number of instances.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection

from archive.auth import Visibility
from archive.harmonize import MAPPING_VERSION, Harmonizer, Placement
from archive.index.schema import patients, series, studies

_CHUNK = 500
_COLUMNS = ("loinc_code", "loinc_name", "loinc_system", "loinc_region", "loinc_timing",
            "harmonize_how", "harmonize_confidence", "harmonize_reason", "harmonize_version")


def placement_values(placement: Placement) -> dict[str, Any]:
    """The study columns of a placement."""
    p = placement.procedure
    return {"loinc_code": p.code if p else None, "loinc_name": p.name if p else None,
            "loinc_system": p.system if p else None, "loinc_region": p.region if p else None,
            "loinc_timing": (p.timing or None) if p else None, "harmonize_how": placement.how,
            "harmonize_confidence": round(placement.confidence, 4),
            # The reason may quote the description as sent: no NUL (PostgreSQL text cannot hold it).
            "harmonize_reason": placement.reason[:500].replace("\x00", ""),
            "harmonize_version": MAPPING_VERSION}


def place_studies(conn: Connection, harmonizer: Harmonizer, study_pks: Iterable[int],
                  descriptions: Mapping[int, str] | None = None) -> Counter[str]:
    """Re-place ``study_pks``; updates the rows whose placement changed. Returns counts by
    outcome: "changed", "unchanged", and the ``how`` of each study's placement. ``descriptions``
    gives the StudyDescription to place for some studies instead of the stored one (the one sent,
    before de-identification cleaned it)."""
    counts: Counter[str] = Counter()
    pks = sorted(set(study_pks))
    for i in range(0, len(pks), _CHUNK):
        chunk = pks[i:i + _CHUNK]
        body_parts: dict[int, str] = {}
        for study_pk, part in conn.execute(
                select(series.c.study_pk, series.c.body_part_examined)
                .where(series.c.study_pk.in_(chunk), series.c.body_part_examined.is_not(None))
                .order_by(series.c.pk)):
            body_parts.setdefault(study_pk, part)
        rows = conn.execute(select(studies.c.pk, studies.c.modalities, studies.c.study_description,
                                   studies.c.num_instances, *(studies.c[c] for c in _COLUMNS))
                            .where(studies.c.pk.in_(chunk)).order_by(studies.c.pk))  # update order: pk
        changes: list[dict[str, Any]] = []
        for row in rows:
            description = (descriptions or {}).get(row.pk, row.study_description or "")
            placement = harmonizer.place([m for m in (row.modalities or "").split("\\") if m],
                                         description, body_parts.get(row.pk, ""), row.num_instances or None)
            values = placement_values(placement)
            counts[placement.how] += 1
            if any(getattr(row, c) != v for c, v in values.items()):
                changes.append({"b_pk": row.pk, **{f"b_{c}": v for c, v in values.items()}})
                counts["changed"] += 1
            else:
                counts["unchanged"] += 1
        if changes:
            conn.execute(update(studies).where(studies.c.pk == bindparam("b_pk"))
                         .values({c: bindparam(f"b_{c}") for c in _COLUMNS}), changes)
    return counts


def place_all(conn: Connection, harmonizer: Harmonizer) -> Counter[str]:
    """Re-place every stored study (``imaging-archive harmonize apply``)."""
    pks = list(conn.execute(select(studies.c.pk).order_by(studies.c.pk)).scalars())
    return place_studies(conn, harmonizer, pks)


# Columns of MIDRC's pending list (unmapped_pending.csv), in its order.
UNMAPPED_COLUMNS = ("StudyDescription", "Modality", "frequency", "Contributor", "reason")


def unmapped(conn: Connection, visible: Visibility, limit: int | None = None) -> list[dict[str, Any]]:
    """Descriptions of unmapped studies with how many studies carry each, most frequent first:
    the curator's worklist. Contributor is the institution of the study's series (if any). Only
    studies of patients in ``visible`` states count."""
    institution = (select(series.c.institution_name).where(series.c.study_pk == studies.c.pk,
                                                           series.c.institution_name.is_not(None))
                   .order_by(series.c.pk).limit(1).scalar_subquery())
    stmt = (select(studies.c.study_description, studies.c.modalities, institution.label("contributor"),
                   func.count().label("n"), func.max(studies.c.harmonize_reason).label("reason"))
            .select_from(studies)
            .join(patients, studies.c.patient_pk == patients.c.pk)
            .where(studies.c.harmonize_how == "unmapped",
                   patients.c.release_state.in_(sorted(visible.states)))
            .group_by(studies.c.study_description, studies.c.modalities, "contributor")
            .order_by(func.count().desc(), studies.c.study_description))
    if limit is not None:
        stmt = stmt.limit(limit)
    return [{"StudyDescription": r.study_description or "", "Modality": ", ".join(
                (r.modalities or "").split("\\")), "frequency": r.n, "Contributor": r.contributor or "",
             "reason": r.reason or ""} for r in conn.execute(stmt)]
