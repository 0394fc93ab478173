"""Writing the index: one transaction per batch of stored instances.

Ingest has already made every file durable under its own unique key; this module decides, inside
the transaction, what each instance is to the index: new, an identical copy of a stored one, or a
different instance under a stored SOP Instance UID (rejected or replacing the old one, per the
configured policy). Writers are serialized in-process: SQLite has one writer at a time anyway, and
it keeps the check-then-insert of duplicates atomic.

Writers of other processes (serve --workers, several hosts on one PostgreSQL) are not serialized
with ours on PostgreSQL: a patient, study or series row two of them create at once is inserted
with ON CONFLICT DO NOTHING and looked up again; counts are updated in pk order (two batches never
wait for each other's rows in a cycle there); a batch that still collides with another (the same
SOP Instance UID stored by both, new rows inserted in opposite orders: a deadlock) is rolled back
and run again, and then sees the other's rows.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from archive.auth import QUARANTINED
from archive.config import ReleaseConfig
from archive.dicom.procedure import PROCEDURE_CODE_SEQUENCE
from archive.harmonize import Harmonizer
from archive.index.db import sqlstate
from archive.index.procedures import place_studies
from archive.index.schema import instances, patients, series, studies
from archive.index.values import column_values, normalize_pn
from archive.query.attributes import Level
from archive.release.assign import assign_pending_on_ingest
from archive.release.states import set_state


class Outcome(Enum):
    STORED = "stored"
    IDENTICAL = "identical"  # the same data set is stored already: success, new copy dropped
    CONFLICT = "conflict"  # another data set under this SOP Instance UID: rejected
    REPLACED = "replaced"  # another data set was stored under this UID and is now replaced


@dataclass
class InstanceRecord:
    """An instance whose file is durable, ready to be indexed."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    json: dict[str, Any]
    meta_json: bytes  # zlib-compressed DICOM JSON as served by /metadata
    bulk: dict[str, Any]
    pixel: dict[str, Any] | None
    sha256: str
    size: int
    storage_key: str
    # De-identification flagged it (burned-in annotation...): its patient goes to quarantine.
    quarantine_reason: str | None = None
    # StudyDescription as sent, when the stored one was cleaned: what harmonization places.
    description: str | None = None


@dataclass
class AddResult:
    outcome: Outcome
    obsolete_key: str | None = None  # a blob nobody references after the commit


@dataclass
class _Deltas:
    series_instances: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    study_instances: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    study_series: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    study_size: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    studies_touched: set[int] = field(default_factory=set)
    # Series an instance was removed from (overwrite): dropped if that left them empty.
    series_removed_from: set[int] = field(default_factory=set)
    new_patients: set[str] = field(default_factory=set)  # PatientIDs this batch created


_IN_CHUNK = 500  # values per IN list (SQLite allows 32,766 bound parameters)
# PostgreSQL errors after which a batch is run again: unique_violation (another process stored
# the same row first), foreign_key_violation (a cached series or study another process removed),
# deadlock_detected, serialization_failure.
_RETRY_STATES = frozenset({"23505", "23503", "40P01", "40001"})
_ATTEMPTS = 5


class IndexWriter:
    """Serialized index transactions. The transaction itself is synchronous SQLAlchemy Core
    code: on SQLite it runs whole in one thread of its own over ``sync_engine`` (one hand-off
    per batch, instead of one per statement through the event loop, which is busy with the
    uploads while ingest runs); on other engines through ``AsyncConnection.run_sync``."""

    def __init__(self, engine: AsyncEngine, duplicate_policy: str = "reject",
                 sync_engine: Engine | None = None, harmonizer: Harmonizer | None = None,
                 release: ReleaseConfig | None = None) -> None:
        self.engine = engine
        # New patients start pending when the sequestration rule (or an admin) is to place them.
        self.release = release or ReleaseConfig()
        self._initial_state = "pending" if self.release.assign_on_ingest else self.release.initial_state
        self.harmonizer = harmonizer  # places each touched study on a LOINC procedure
        self.duplicate_policy = duplicate_policy
        self._sync_engine = sync_engine
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="index-writer") if sync_engine else None
        self._lock = asyncio.Lock()
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    async def add(self, records: list[InstanceRecord]) -> list[AddResult]:
        """Index ``records`` in one transaction; the results are in the same order."""
        if not records:
            return []
        async with self._lock:
            # No study/series pk outlives its transaction: another process (or an admin's delete)
            # may remove a row, and SQLite hands a removed row's pk to the next new row, so a
            # cached pk could file an instance under another patient's study. Looking the batch's
            # UIDs up costs one SELECT … IN per level per batch.
            results, _removed = await self._transaction_retried(records)
            return results

    async def _transaction_retried(self, records: list[InstanceRecord]) -> tuple[list[AddResult], bool]:
        """The batch's transaction, run again (from a clean slate) when it collided with another
        process's (see _RETRY_STATES)."""
        for _ in range(_ATTEMPTS - 1):
            try:
                return await self._transaction(records, {})
            except DBAPIError as exc:
                if sqlstate(exc) not in _RETRY_STATES:
                    raise
        return await self._transaction(records, {})

    async def _transaction(self, records: list[InstanceRecord],
                           cache: MutableMapping[tuple[str, Any], int]) -> tuple[list[AddResult], bool]:
        if self._thread is None:
            async with self.engine.begin() as conn:
                return await conn.run_sync(self._add, records, cache)
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._add_in_thread, records, cache)

    def _add_in_thread(self, records: list[InstanceRecord],
                       cache: MutableMapping[tuple[str, Any], int]) -> tuple[list[AddResult], bool]:
        assert self._sync_engine is not None
        with self._sync_engine.begin() as conn:
            return self._add(conn, records, cache)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._sync_engine is not None:
            self._sync_engine.dispose()

    async def stored_keys(self, sop_uids: list[str]) -> set[str]:
        """The storage keys the index references for these instances."""
        keys: set[str] = set()
        for i in range(0, len(sop_uids), 500):
            async with self.engine.connect() as conn:
                rows = await conn.execute(select(instances.c.storage_key).where(
                    instances.c.sop_uid.in_(sop_uids[i:i + 500])))
                keys.update(rows.scalars())
        return keys

    def _add(self, conn: Connection, records: list[InstanceRecord],
                   cache: MutableMapping[tuple[str, Any], int]) -> tuple[list[AddResult], bool]:
        uids = list({r.sop_uid for r in records})
        rows = conn.execute(
            select(instances.c.pk, instances.c.sop_uid, instances.c.sha256, instances.c.storage_key,
                   instances.c.series_pk, instances.c.size).where(instances.c.sop_uid.in_(uids)))
        existing = {row.sop_uid: row for row in rows}
        deltas = _Deltas()
        results: list[AddResult] = []
        accepted: list[InstanceRecord] = []
        pending: dict[str, InstanceRecord] = {}
        for rec in records:
            old = existing.get(rec.sop_uid)
            dup = pending.get(rec.sop_uid)
            if dup is not None:  # the same UID twice in one batch
                same = dup.sha256 == rec.sha256
                results.append(AddResult(Outcome.IDENTICAL if same else Outcome.CONFLICT,
                                         rec.storage_key))
                continue
            obsolete = None
            if old is not None:
                if old.sha256 == rec.sha256:
                    results.append(AddResult(Outcome.IDENTICAL, rec.storage_key))
                    continue
                if self.duplicate_policy != "overwrite":
                    results.append(AddResult(Outcome.CONFLICT, rec.storage_key))
                    continue
                self._remove_instance(conn, old, deltas)
                obsolete = old.storage_key
            accepted.append(rec)
            pending[rec.sop_uid] = rec
            results.append(AddResult(Outcome.REPLACED if obsolete else Outcome.STORED, obsolete))
        pks: list[tuple[int, int]] = []
        if accepted:
            pks = self._series_pks(conn, accepted, cache, deltas)
            for rec, (series_pk, study_pk) in zip(accepted, pks, strict=True):
                deltas.series_instances[series_pk] += 1
                deltas.study_instances[study_pk] += 1
                deltas.study_size[study_pk] += rec.size
            rows = [self._instance_row(rec, ser) for rec, (ser, _) in zip(accepted, pks, strict=True)]
            conn.execute(instances.insert(), rows)
        self._apply(conn, deltas)
        for rec in accepted:
            if rec.quarantine_reason:  # de-identification flagged it: nothing of the patient is public
                pid, issuer = _patient_key(rec)
                set_state(conn, pid, QUARANTINED, "ingest", "deidentify", rec.quarantine_reason, issuer)
        if self.harmonizer is not None:
            # A description de-identification cleaned is placed as it was sent.
            sent = {study: rec.description for rec, (_, study) in zip(accepted, pks, strict=True)
                    if rec.description}
            place_studies(conn, self.harmonizer, deltas.studies_touched | set(deltas.study_instances), sent)
        if self.release.assign_on_ingest and deltas.new_patients:
            assign_pending_on_ingest(conn, self.release, sorted(deltas.new_patients))
        return results, bool(deltas.series_removed_from)

    @staticmethod
    def _instance_row(rec: InstanceRecord, series_pk: int) -> dict[str, Any]:
        row = column_values(rec.json, Level.INSTANCE)
        row.update(
            series_pk=series_pk, sop_uid=rec.sop_uid, sop_class_uid=rec.sop_class_uid,
            transfer_syntax_uid=rec.transfer_syntax_uid, size=rec.size, sha256=rec.sha256,
            storage_key=rec.storage_key, meta_json=rec.meta_json, quarantine_reason=rec.quarantine_reason,
            bulk=json.dumps(rec.bulk, separators=(",", ":")),
            pixel=json.dumps(rec.pixel, separators=(",", ":")) if rec.pixel else None)
        return row

    def _remove_instance(self, conn: Connection, old: Any, deltas: _Deltas) -> None:
        conn.execute(delete(instances).where(instances.c.pk == old.pk))
        study_pk = (conn.execute(
            select(series.c.study_pk).where(series.c.pk == old.series_pk))).scalar_one()
        deltas.series_instances[old.series_pk] -= 1
        deltas.series_removed_from.add(old.series_pk)
        deltas.study_instances[study_pk] -= 1
        deltas.study_size[study_pk] -= old.size

    def _series_pks(self, conn: Connection, records: list[InstanceRecord],
                          cache: MutableMapping[tuple[str, Any], int],
                          deltas: _Deltas) -> list[tuple[int, int]]:
        """(series pk, study pk) of each record, creating the rows that do not exist yet.

        A handful of statements per batch whatever its size: each level is one SELECT … IN for
        the keys not cached, then one multi-row INSERT … RETURNING for those still missing
        (a batch of 100 instances over 20 new studies used to take ~70 round trips)."""
        # The first instance of a new study or series gives its row's values.
        want_series: dict[str, InstanceRecord] = {}
        want_studies: dict[str, InstanceRecord] = {}
        for r in records:
            if ("series", r.series_uid) not in cache:
                want_series.setdefault(r.series_uid, r)
            if ("study", r.study_uid) not in cache:
                want_studies.setdefault(r.study_uid, r)
        if want_series:
            found = self._lookup(conn, series, ("series_uid",), [(u,) for u in want_series])
            for (uid,), pk in found.items():
                cache[("series", uid)] = pk
        new_series = {u: r for u, r in want_series.items() if ("series", u) not in cache}
        if want_studies:
            found = self._lookup(conn, studies, ("study_uid",), [(u,) for u in want_studies])
            for (uid,), pk in found.items():
                cache[("study", uid)] = pk
        new_studies = {u: r for u, r in want_studies.items() if ("study", u) not in cache}
        if new_studies:
            patient_rows = {_patient_key(r): {**_patient_row(r), "release_state": self._initial_state}
                            for r in new_studies.values()}
            patient_pks, new_patients = self._ensure(conn, patients, ("patient_id", "issuer_of_patient_id"),
                                                     patient_rows)
            deltas.new_patients.update(pid for pid, _ in new_patients)
            study_rows = {(u,): _study_row(r, patient_pks[_patient_key(r)])
                          for u, r in new_studies.items()}
            study_pks, _ = self._ensure(conn, studies, ("study_uid",), study_rows, absent=True)
            for (uid,), pk in study_pks.items():
                cache[("study", uid)] = pk
        if new_series:
            series_rows = {(u,): _series_row(r, cache[("study", r.study_uid)])
                           for u, r in new_series.items()}
            series_pks, created = self._ensure(conn, series, ("series_uid",), series_rows, absent=True)
            for (uid,), pk in series_pks.items():
                cache[("series", uid)] = pk
            for key in created:
                deltas.study_series[series_rows[key]["study_pk"]] += 1
        out = [(cache[("series", r.series_uid)], cache[("study", r.study_uid)]) for r in records]
        deltas.studies_touched.update(study for _, study in out)
        return out

    @staticmethod
    def _lookup(conn: Connection, table: Any, keys: tuple[str, ...],
                      wanted: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], int]:
        """pk of each row whose ``keys`` columns equal one of ``wanted`` (absent: not stored).
        The IN list is on the first key column; the rest are compared here."""
        first = table.c[keys[0]]
        cols = [table.c[k] for k in keys]
        wanted_set = set(wanted)
        found: dict[tuple[Any, ...], int] = {}
        values = sorted({w[0] for w in wanted})
        for i in range(0, len(values), _IN_CHUNK):
            rows = conn.execute(select(table.c.pk, *cols).where(first.in_(values[i:i + _IN_CHUNK])))
            for row in rows:
                key = tuple(row[1:])
                if key in wanted_set:
                    found[key] = row[0]
        return found

    def _ensure(self, conn: Connection, table: Any, keys: tuple[str, ...],
                rows: dict[tuple[Any, ...], dict[str, Any]], absent: bool = False
                ) -> tuple[dict[tuple[Any, ...], int], set[tuple[Any, ...]]]:
        """pk of the row for each key of ``rows``, inserting the missing ones in one statement;
        also the keys this call created. ``absent``: the caller has just looked them up."""
        found = {} if absent else self._lookup(conn, table, keys, list(rows))
        missing = [k for k in rows if k not in found]
        if not missing:
            return found, set()
        cols = [table.c[k] for k in keys]
        stmt = self._insert(table).on_conflict_do_nothing().returning(table.c.pk, *cols)
        created: set[tuple[Any, ...]] = set()
        for row in conn.execute(stmt, [rows[k] for k in missing]):
            key = tuple(row[1:])
            found[key] = row[0]
            created.add(key)
        if len(found) < len(rows):  # another process inserted some in between (PostgreSQL)
            found.update(self._lookup(conn, table, keys, [k for k in rows if k not in found]))
        return found, created

    def _apply(self, conn: Connection, d: _Deltas) -> None:
        """Apply the batch's count changes: one executemany UPDATE per table."""
        # Rows are updated in pk order, as the other writers update them (no lock cycles).
        series_n = [{"b_pk": pk, "b_n": n} for pk, n in sorted(d.series_instances.items()) if n]
        if series_n:
            conn.execute(update(series).where(series.c.pk == bindparam("b_pk")).values(
                num_instances=series.c.num_instances + bindparam("b_n")), series_n)
        for pk in d.series_removed_from:
            row = (conn.execute(select(series.c.study_pk, series.c.num_instances)
                                      .where(series.c.pk == pk))).one()
            if row.num_instances == 0:  # its only instance moved to another series
                conn.execute(delete(series).where(series.c.pk == pk))
                d.study_series[row.study_pk] -= 1
        touched = d.studies_touched | set(d.study_instances)
        # Studies whose set of series changed get their modalities recomputed.
        changed = touched if d.series_removed_from else {pk for pk in touched if d.study_series.get(pk)}
        modalities = self._modalities(conn, changed)
        plain, recomputed = [], []
        for pk in sorted(touched):
            row = {"b_pk": pk, "b_instances": d.study_instances.get(pk, 0),
                   "b_series": d.study_series.get(pk, 0), "b_size": d.study_size.get(pk, 0)}
            if pk in changed:
                recomputed.append({**row, "b_modalities": modalities.get(pk, "")})
            else:
                plain.append(row)
        counts = {"num_instances": studies.c.num_instances + bindparam("b_instances"),
                  "num_series": studies.c.num_series + bindparam("b_series"),
                  "size": studies.c.size + bindparam("b_size"), "updated": func.now()}
        stmt = update(studies).where(studies.c.pk == bindparam("b_pk"))
        if plain:
            conn.execute(stmt.values(**counts), plain)
        if recomputed:
            conn.execute(stmt.values(**counts, modalities=bindparam("b_modalities")), recomputed)
        for pk in set(d.study_instances) if d.series_removed_from else ():
            empty = (conn.execute(select(studies.c.num_instances)
                                        .where(studies.c.pk == pk))).scalar_one() == 0
            if empty:  # its only instances moved to another study
                conn.execute(delete(studies).where(studies.c.pk == pk))

    @staticmethod
    def _modalities(conn: Connection, study_pks: set[int]) -> dict[int, str]:
        """Study pk -> its series' modalities, sorted and backslash-joined."""
        found: dict[int, set[str]] = defaultdict(set)
        pks = sorted(study_pks)
        for i in range(0, len(pks), _IN_CHUNK):
            rows = conn.execute(select(series.c.study_pk, series.c.modality).distinct().where(
                series.c.study_pk.in_(pks[i:i + _IN_CHUNK]), series.c.modality.is_not(None)))
            for study_pk, modality in rows:
                if modality:
                    found[study_pk].add(modality)
        return {pk: "\\".join(sorted(m)) for pk, m in found.items()}


def _patient_key(rec: InstanceRecord) -> tuple[str, str]:
    patient = column_values(rec.json, Level.PATIENT)
    return patient["patient_id"] or "", patient["issuer_of_patient_id"] or ""


def _patient_row(rec: InstanceRecord) -> dict[str, Any]:
    row = column_values(rec.json, Level.PATIENT)
    row["patient_id"] = row["patient_id"] or ""
    row["issuer_of_patient_id"] = row["issuer_of_patient_id"] or ""
    row["patient_name_norm"] = normalize_pn(row.get("patient_name"))
    return row


def _study_row(rec: InstanceRecord, patient_pk: int) -> dict[str, Any]:
    row = column_values(rec.json, Level.STUDY)
    row["study_uid"] = rec.study_uid
    row["referring_physician_name_norm"] = normalize_pn(row.get("referring_physician_name"))
    row["patient_pk"] = patient_pk
    items = rec.json.get(PROCEDURE_CODE_SEQUENCE, {}).get("Value")
    row["procedure_codes"] = json.dumps(items, separators=(",", ":")) if items else None
    return row


def _series_row(rec: InstanceRecord, study_pk: int) -> dict[str, Any]:
    row = column_values(rec.json, Level.SERIES)
    row["series_uid"] = rec.series_uid
    row["study_pk"] = study_pk
    return row
