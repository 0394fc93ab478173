"""Removing a patient's instances from the index (admin operations: quarantined data)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from archive.index.schema import instances, patients, series, studies


def delete_patient(conn: Connection, patient_pk: int) -> list[str]:
    """Delete the patient's instances, series, studies and the patient itself from the index, in
    the caller's transaction; returns the storage keys of the deleted instances, whose blobs the
    caller removes once the transaction has committed (a crash in between leaves unreferenced
    blobs, never an index row without its file)."""
    study_pks = select(studies.c.pk).where(studies.c.patient_pk == patient_pk)
    series_pks = select(series.c.pk).where(series.c.study_pk.in_(study_pks))
    keys = list(conn.execute(select(instances.c.storage_key)
                             .where(instances.c.series_pk.in_(series_pks))).scalars())
    conn.execute(delete(instances).where(instances.c.series_pk.in_(series_pks)))
    conn.execute(delete(series).where(series.c.study_pk.in_(study_pks)))
    conn.execute(delete(studies).where(studies.c.patient_pk == patient_pk))
    conn.execute(delete(patients).where(patients.c.pk == patient_pk))
    return keys
