"""Removing instances from the index, for ``imaging-archive delete`` and ``verify --repair``.

The instances' rows go, then the series, studies and patients they leave empty; the counts of
what remains (series and study instance counts, a study's series count, size and modalities) are
recomputed from the rows left rather than adjusted, so they come out right whatever they were.
All in the caller's transaction; the storage keys of the removed instances are returned for the
caller to delete once the transaction has committed (a crash in between leaves unreferenced blobs,
which ``verify`` reports, never an index row without its file).

``archive.index.delete.delete_patient`` removes a whole patient (the quarantine's deletion); a
study or a single instance needs the recount, hence this module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.engine import Connection

from archive.bulk.resources import Archive
from archive.index.schema import instances, patients, series, studies
from archive.index.writer import IndexWriter

log = logging.getLogger("archive.delete")
_CHUNK = 500  # values per IN list


def _chunks(values: Sequence[int]) -> Iterable[Sequence[int]]:
    return (values[i:i + _CHUNK] for i in range(0, len(values), _CHUNK))


@dataclass
class Removed:
    """What a removal took out of the index."""

    keys: list[str] = field(default_factory=list)  # storage keys of the removed instances
    series: int = 0
    studies: int = 0
    patients: list[str] = field(default_factory=list)  # PatientIDs of the patients removed


def study_instance_pks(conn: Connection, study_uid: str) -> list[int] | None:
    """The pks of a study's instances; None when the index has no such study."""
    if conn.execute(select(studies.c.pk).where(studies.c.study_uid == study_uid)).first() is None:
        return None
    return list(conn.execute(select(instances.c.pk).select_from(
        instances.join(series, instances.c.series_pk == series.c.pk)
        .join(studies, series.c.study_pk == studies.c.pk)).where(studies.c.study_uid == study_uid)).scalars())


def study_summary(conn: Connection, study_uid: str) -> dict[str, object] | None:
    """What ``delete`` shows before it asks: the study's patient, date, description and counts."""
    row = conn.execute(select(patients.c.patient_id, patients.c.release_state, studies.c.study_date,
                              studies.c.study_description, studies.c.num_series, studies.c.num_instances,
                              studies.c.size)
                       .select_from(studies.join(patients, studies.c.patient_pk == patients.c.pk))
                       .where(studies.c.study_uid == study_uid)).first()
    return dict(row._mapping) if row is not None else None


def remove_instances(conn: Connection, pks: Sequence[int]) -> Removed:
    """Remove the instances ``pks`` and whatever they leave empty (see the module docstring)."""
    out = Removed()
    series_pks: set[int] = set()
    for chunk in _chunks(pks):
        for key, series_pk in conn.execute(select(instances.c.storage_key, instances.c.series_pk)
                                           .where(instances.c.pk.in_(chunk))):
            out.keys.append(key)
            series_pks.add(series_pk)
        conn.execute(delete(instances).where(instances.c.pk.in_(chunk)))
    study_pks = _recount_series(conn, sorted(series_pks), out)
    patient_pks = _recount_studies(conn, sorted(study_pks), out)
    _remove_empty_patients(conn, sorted(patient_pks), out)
    return out


def _recount_series(conn: Connection, pks: Sequence[int], out: Removed) -> set[int]:
    """Recount the series' instances, remove the empty ones; their studies' pks."""
    count = select(func.count()).where(instances.c.series_pk == series.c.pk).scalar_subquery()
    study_pks: set[int] = set()
    for chunk in _chunks(pks):
        study_pks.update(conn.execute(select(series.c.study_pk).where(series.c.pk.in_(chunk))).scalars())
        conn.execute(update(series).where(series.c.pk.in_(chunk)).values(num_instances=count))
        out.series += conn.execute(delete(series).where(series.c.pk.in_(chunk),
                                                        series.c.num_instances == 0)).rowcount
    return study_pks


def _recount_studies(conn: Connection, pks: Sequence[int], out: Removed) -> set[int]:
    """Recount the studies' instances, series, size and modalities, remove the empty ones; their
    patients' pks."""
    of_study = instances.join(series, instances.c.series_pk == series.c.pk)
    n_instances = select(func.count()).select_from(of_study).where(
        series.c.study_pk == studies.c.pk).scalar_subquery()
    size = select(func.coalesce(func.sum(instances.c.size), 0)).select_from(of_study).where(
        series.c.study_pk == studies.c.pk).scalar_subquery()
    n_series = select(func.count()).select_from(series).where(
        series.c.study_pk == studies.c.pk).scalar_subquery()
    patient_pks: set[int] = set()
    for chunk in _chunks(pks):
        patient_pks.update(conn.execute(select(studies.c.patient_pk).where(studies.c.pk.in_(chunk))).scalars())
        conn.execute(update(studies).where(studies.c.pk.in_(chunk)).values(
            num_instances=n_instances, num_series=n_series, size=size, updated=func.now()))
        # The writer's own helper: modalities as ingest records them (sorted, backslash-joined).
        modalities = IndexWriter._modalities(conn, set(chunk))
        conn.execute(update(studies).where(studies.c.pk == bindparam("b_pk")).values(
            modalities=bindparam("b_modalities")),
            [{"b_pk": pk, "b_modalities": modalities.get(pk, "")} for pk in chunk])
        out.studies += conn.execute(delete(studies).where(studies.c.pk.in_(chunk),
                                                          studies.c.num_instances == 0)).rowcount
    return patient_pks


def _remove_empty_patients(conn: Connection, pks: Sequence[int], out: Removed) -> None:
    has_study = select(studies.c.pk).where(studies.c.patient_pk == patients.c.pk).exists()
    for chunk in _chunks(pks):
        gone = conn.execute(select(patients.c.pk, patients.c.patient_id)
                            .where(patients.c.pk.in_(chunk), ~has_study)).all()
        if gone:
            conn.execute(delete(patients).where(patients.c.pk.in_([pk for pk, _ in gone])))
            out.patients += [pid for _, pid in gone]


async def delete_study(archive: Archive, study_uid: str) -> Removed | None:
    """``imaging-archive delete --study``: the study's rows in one transaction, then its files;
    None when the index has no such study."""
    async with archive.engine.begin() as conn:
        pks = await conn.run_sync(study_instance_pks, study_uid)
        if pks is None:
            return None
        removed = await conn.run_sync(remove_instances, pks)
    for key in removed.keys:
        try:
            await archive.store.delete(key)
        except Exception:  # an unreferenced blob is never served; verify reports it
            log.warning("could not delete the file of a deleted instance: %s", key,
                        extra={"study_uid": study_uid, "storage_key": key})
    log.warning("deleted study %s: %d instance(s), %d series; patients removed: %s", study_uid,
                len(removed.keys), removed.series, ", ".join(removed.patients) or "none",
                extra={"study_uid": study_uid, "instances": len(removed.keys), "series": removed.series,
                       "patient_ids": removed.patients})
    return removed
