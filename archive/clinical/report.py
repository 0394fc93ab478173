"""The linkage report between clinical records and images: which patients have images but no
clinical data, which clinical records have no images, and imaging_study records that contradict
the index.

A case links to the images of the patients whose PatientID (``patients.patient_id``, any issuer)
is its submitter_id; an imaging_study record to the study whose StudyInstanceUID is its
submitter_id (``studies.study_uid``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Select, and_, exists, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from archive.index.schema import cases, imaging_study_clinical, patients, studies


@dataclass
class Mismatch:
    """An imaging_study record whose case is not the patient of that study in the index."""

    study_uid: str
    case_submitter_id: str  # the case the clinical record names
    patient_id: str  # the PatientID of the study's images


@dataclass
class LinkageReport:
    """Counts are complete; each list holds its first ``limit`` entries, sorted."""

    patients_with_images: int = 0
    cases: int = 0
    linked_patients: int = 0  # patients with images and a case
    patients_without_clinical: list[str] = field(default_factory=list)
    patients_without_clinical_count: int = 0
    cases_without_images: list[str] = field(default_factory=list)
    cases_without_images_count: int = 0
    # imaging_study records whose StudyInstanceUID is not in the index
    imaging_studies_without_images: list[str] = field(default_factory=list)
    imaging_studies_without_images_count: int = 0
    # indexed studies without an imaging_study record (days_to_study, test days unknown)
    studies_without_clinical: list[str] = field(default_factory=list)
    studies_without_clinical_count: int = 0
    study_case_mismatches: list[Mismatch] = field(default_factory=list)
    study_case_mismatches_count: int = 0
    limit: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _patient_has_case() -> Any:
    return exists().where(cases.c.submitter_id == patients.c.patient_id)


def _case_has_images() -> Any:
    return exists().where(and_(patients.c.patient_id == cases.c.submitter_id,
                               studies.c.patient_pk == patients.c.pk))


async def _listed(conn: AsyncConnection, query: Select[Any], limit: int | None) -> tuple[list[Any], int]:
    """The first ``limit`` rows of ``query`` and the count of all of them."""
    count = (await conn.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
    rows = await conn.execute(query.limit(limit) if limit is not None else query)
    return list(rows), count


async def linkage_report(engine: AsyncEngine, limit: int | None = 1000) -> LinkageReport:
    """The linkage between clinical records and images; lists cut at ``limit`` (None: all)."""
    report = LinkageReport(limit=limit)
    with_images = (select(patients.c.patient_id).distinct()
                   .join(studies, studies.c.patient_pk == patients.c.pk))
    async with engine.connect() as conn:
        report.patients_with_images = (await conn.execute(
            select(func.count()).select_from(with_images.subquery()))).scalar_one()
        report.cases = (await conn.execute(select(func.count()).select_from(cases))).scalar_one()

        rows, report.patients_without_clinical_count = await _listed(
            conn, with_images.where(~_patient_has_case()).order_by(patients.c.patient_id), limit)
        report.patients_without_clinical = [r.patient_id for r in rows]
        report.linked_patients = report.patients_with_images - report.patients_without_clinical_count

        rows, report.cases_without_images_count = await _listed(
            conn, select(cases.c.submitter_id).where(~_case_has_images()).order_by(cases.c.submitter_id),
            limit)
        report.cases_without_images = [r.submitter_id for r in rows]

        isc = imaging_study_clinical
        rows, report.imaging_studies_without_images_count = await _listed(
            conn, select(isc.c.submitter_id)
            .where(~exists().where(studies.c.study_uid == isc.c.submitter_id))
            .order_by(isc.c.submitter_id), limit)
        report.imaging_studies_without_images = [r.submitter_id for r in rows]

        rows, report.studies_without_clinical_count = await _listed(
            conn, select(studies.c.study_uid)
            .where(~exists().where(isc.c.submitter_id == studies.c.study_uid))
            .order_by(studies.c.study_uid), limit)
        report.studies_without_clinical = [r.study_uid for r in rows]

        rows, report.study_case_mismatches_count = await _listed(
            conn, select(isc.c.submitter_id, isc.c.case_submitter_id, patients.c.patient_id)
            .join(studies, studies.c.study_uid == isc.c.submitter_id)
            .join(patients, patients.c.pk == studies.c.patient_pk)
            .where(patients.c.patient_id != isc.c.case_submitter_id)
            .order_by(isc.c.submitter_id), limit)
        report.study_case_mismatches = [Mismatch(r.submitter_id, r.case_submitter_id, r.patient_id)
                                        for r in rows]
    return report


def summary(report: LinkageReport) -> str:
    """The report as text, for the command line."""
    lines = [
        f"patients with images: {report.patients_with_images}, cases: {report.cases}, "
        f"linked: {report.linked_patients}",
    ]

    def section(title: str, count: int, items: list[str]) -> None:
        lines.append(f"{title}: {count}")
        lines.extend(f"  {item}" for item in items)
        if count > len(items):
            lines.append(f"  ... and {count - len(items)} more")

    section("patients with images but no clinical data (no case)", report.patients_without_clinical_count,
            report.patients_without_clinical)
    section("cases without images", report.cases_without_images_count, report.cases_without_images)
    section("imaging_study records without images", report.imaging_studies_without_images_count,
            report.imaging_studies_without_images)
    section("studies without an imaging_study record", report.studies_without_clinical_count,
            report.studies_without_clinical)
    section("imaging_study records naming another case than the study's patient",
            report.study_case_mismatches_count,
            [f"{m.study_uid}: case {m.case_submitter_id}, images of {m.patient_id}"
             for m in report.study_case_mismatches])
    return "\n".join(lines)
