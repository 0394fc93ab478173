"""A cohort's files: the manifest (one row per series, JSON or CSV) and its instances for the zip.

Both read the cohort study by study in chunks of study pks (from :func:`archive.cohorts.query.
study_pks`), each chunk in a short read of its own, so a large cohort is streamed without holding
its rows, or a database connection, while the client reads.

Manifest columns: StudyInstanceUID, SeriesInstanceUID, PatientID, Modality, ``study_url`` and
``series_url`` (WADO-RS retrieve URLs, PS3.18 §10.4), ``instances`` and ``bytes`` (as stored).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from archive.cohorts.query import study_url
from archive.index.reader import StoredInstance
from archive.index.schema import instances, patients, series, studies

COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "PatientID", "Modality", "study_url", "series_url",
           "instances", "bytes")
FORMATS = {"json": "application/json", "csv": "text/csv"}
_CHUNK = 500  # study pks per read


@dataclass(frozen=True)
class ManifestRow:
    study_uid: str
    series_uid: str
    patient_id: str
    modality: str | None
    study_url: str
    series_url: str
    instances: int
    bytes: int

    def values(self) -> tuple[Any, ...]:
        return (self.study_uid, self.series_uid, self.patient_id, self.modality, self.study_url,
                self.series_url, self.instances, self.bytes)

    def to_json(self) -> dict[str, Any]:
        return dict(zip(COLUMNS, self.values(), strict=True))


def _chunks(pks: Sequence[int]) -> list[Sequence[int]]:
    return [pks[i:i + _CHUNK] for i in range(0, len(pks), _CHUNK)]


async def series_rows(engine: AsyncEngine, pks: Sequence[int], base_url: str) -> AsyncIterator[ManifestRow]:
    """The series of the studies ``pks``, in their order, with instance counts and bytes summed
    from the stored instances."""
    for chunk in _chunks(pks):
        order = {pk: i for i, pk in enumerate(chunk)}
        stmt = (select(studies.c.pk, studies.c.study_uid, series.c.series_uid, patients.c.patient_id,
                       series.c.modality, func.count(instances.c.pk), func.sum(instances.c.size))
                .select_from(series.join(studies, series.c.study_pk == studies.c.pk)
                             .join(patients, studies.c.patient_pk == patients.c.pk)
                             .join(instances, instances.c.series_pk == series.c.pk))
                .where(studies.c.pk.in_(chunk))
                # Every table's key: PostgreSQL takes only columns of grouped keys' tables.
                .group_by(series.c.pk, studies.c.pk, patients.c.pk)
                .order_by(series.c.series_number, series.c.pk))
        async with engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        for r in sorted(rows, key=lambda r: order[r[0]]):  # stable: series order within a study
            url = study_url(base_url, r.study_uid)
            yield ManifestRow(r.study_uid, r.series_uid, r.patient_id, r.modality, url,
                              f"{url}/series/{r.series_uid}", int(r[5]), int(r[6] or 0))


async def instances_of(engine: AsyncEngine, pks: Sequence[int]) -> AsyncIterator[StoredInstance]:
    """Every stored instance of the studies ``pks``, study by study in retrieve order."""
    for chunk in _chunks(pks):
        order = {pk: i for i, pk in enumerate(chunk)}
        stmt = (select(studies.c.pk, studies.c.study_uid, series.c.series_uid, instances.c.sop_uid,
                       instances.c.sop_class_uid, instances.c.transfer_syntax_uid,
                       instances.c.storage_key, instances.c.size)
                .select_from(instances.join(series, instances.c.series_pk == series.c.pk)
                             .join(studies, series.c.study_pk == studies.c.pk))
                .where(studies.c.pk.in_(chunk))
                .order_by(series.c.series_number, series.c.pk, instances.c.instance_number, instances.c.pk))
        async with engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        for r in sorted(rows, key=lambda r: order[r[0]]):
            yield StoredInstance(*r[1:])


async def json_chunks(header: dict[str, Any], rows: AsyncIterable[ManifestRow]) -> AsyncIterator[str]:
    """The JSON manifest, written as it goes: ``{"cohort": header, "series": [...], "totals": {...}}``."""
    yield '{"cohort": ' + json.dumps(header) + ',\n"series": ['
    totals = {"studies": 0, "series": 0, "instances": 0, "bytes": 0}
    last_study = None
    async for row in rows:
        yield ("\n" if not totals["series"] else ",\n") + json.dumps(row.to_json())
        totals["series"] += 1
        totals["instances"] += row.instances
        totals["bytes"] += row.bytes
        if row.study_uid != last_study:  # rows come study by study
            totals["studies"] += 1
            last_study = row.study_uid
    yield '\n],\n"totals": ' + json.dumps(totals) + "}\n"


async def csv_chunks(rows: AsyncIterable[ManifestRow], batch: int = 500) -> AsyncIterator[str]:
    """The CSV manifest (RFC 4180, header row first), a batch of rows per chunk."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    n = 0
    async for row in rows:
        writer.writerow(row.values())
        n += 1
        if n % batch == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def manifest_chunks(fmt: str, header: dict[str, Any], rows: AsyncIterable[ManifestRow]) -> AsyncIterator[str]:
    return json_chunks(header, rows) if fmt == "json" else csv_chunks(rows)
