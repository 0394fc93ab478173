"""Writing the index: one transaction per batch of stored instances.

Ingest has already made every file durable under its own unique key; this module decides, inside
the transaction, what each instance is to the index: new, an identical copy of a stored one, or a
different instance under a stored SOP Instance UID (rejected or replacing the old one, per the
configured policy). Writers are serialized in-process: SQLite has one writer at a time anyway, and
it keeps the check-then-insert of duplicates atomic.
"""

from __future__ import annotations

import asyncio
import json
from collections import ChainMap, defaultdict
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from archive.index.schema import instances, patients, series, studies
from archive.index.values import column_values, normalize_pn
from archive.query.attributes import Level


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


_KNOWN_MAX = 20_000


class IndexWriter:
    def __init__(self, engine: AsyncEngine, duplicate_policy: str = "reject") -> None:
        self.engine = engine
        self.duplicate_policy = duplicate_policy
        self._lock = asyncio.Lock()
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        # ("study"|"series", UID) -> pk of rows known to exist: saves three SELECTs per instance
        # of a series already seen (C-STORE commits one instance at a time).
        self._known: dict[tuple[str, Any], int] = {}

    async def add(self, records: list[InstanceRecord]) -> list[AddResult]:
        """Index ``records`` in one transaction; the results are in the same order."""
        if not records:
            return []
        async with self._lock:
            # Lookups see the shared cache; what this transaction learns goes to the first map
            # and is shared only once the transaction has committed.
            cache: ChainMap[tuple[str, Any], int] = ChainMap({}, self._known)
            async with self.engine.begin() as conn:
                results, removed = await self._add(conn, records, cache)
            if removed:  # a series or study may be gone: forget everything
                self._known.clear()
            else:
                if len(self._known) > _KNOWN_MAX:
                    self._known.clear()
                self._known.update(cache.maps[0])
            return results

    async def stored_keys(self, sop_uids: list[str]) -> set[str]:
        """The storage keys the index references for these instances."""
        keys: set[str] = set()
        for i in range(0, len(sop_uids), 500):
            async with self.engine.connect() as conn:
                rows = await conn.execute(select(instances.c.storage_key).where(
                    instances.c.sop_uid.in_(sop_uids[i:i + 500])))
                keys.update(rows.scalars())
        return keys

    async def _add(self, conn: AsyncConnection, records: list[InstanceRecord],
                   cache: MutableMapping[tuple[str, Any], int]) -> tuple[list[AddResult], bool]:
        uids = list({r.sop_uid for r in records})
        rows = await conn.execute(
            select(instances.c.pk, instances.c.sop_uid, instances.c.sha256, instances.c.storage_key,
                   instances.c.series_pk, instances.c.size).where(instances.c.sop_uid.in_(uids)))
        existing = {row.sop_uid: row for row in rows}
        deltas = _Deltas()
        results: list[AddResult] = []
        new_rows: list[dict[str, Any]] = []
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
                await self._remove_instance(conn, old, deltas)
                obsolete = old.storage_key
            series_pk, study_pk = await self._series_for(conn, rec, cache, deltas)
            new_rows.append(self._instance_row(rec, series_pk))
            deltas.series_instances[series_pk] += 1
            deltas.study_instances[study_pk] += 1
            deltas.study_size[study_pk] += rec.size
            pending[rec.sop_uid] = rec
            results.append(AddResult(Outcome.REPLACED if obsolete else Outcome.STORED, obsolete))
        if new_rows:
            await conn.execute(instances.insert(), new_rows)
        await self._apply(conn, deltas)
        return results, bool(deltas.series_removed_from)

    @staticmethod
    def _instance_row(rec: InstanceRecord, series_pk: int) -> dict[str, Any]:
        row = column_values(rec.json, Level.INSTANCE)
        row.update(
            series_pk=series_pk, sop_uid=rec.sop_uid, sop_class_uid=rec.sop_class_uid,
            transfer_syntax_uid=rec.transfer_syntax_uid, size=rec.size, sha256=rec.sha256,
            storage_key=rec.storage_key, meta_json=rec.meta_json,
            bulk=json.dumps(rec.bulk, separators=(",", ":")),
            pixel=json.dumps(rec.pixel, separators=(",", ":")) if rec.pixel else None)
        return row

    async def _remove_instance(self, conn: AsyncConnection, old: Any, deltas: _Deltas) -> None:
        await conn.execute(delete(instances).where(instances.c.pk == old.pk))
        study_pk = (await conn.execute(
            select(series.c.study_pk).where(series.c.pk == old.series_pk))).scalar_one()
        deltas.series_instances[old.series_pk] -= 1
        deltas.series_removed_from.add(old.series_pk)
        deltas.study_instances[study_pk] -= 1
        deltas.study_size[study_pk] -= old.size

    async def _get_or_create(self, conn: AsyncConnection, table: Any, key: dict[str, Any],
                             values: dict[str, Any]) -> tuple[int, bool]:
        """pk of the row matching ``key``, inserting ``values`` if there is none."""
        cond = [table.c[k] == v for k, v in key.items()]
        pk = (await conn.execute(select(table.c.pk).where(*cond))).scalar()
        if pk is not None:
            return pk, False
        stmt = self._insert(table).values(**key, **values).on_conflict_do_nothing()
        result = await conn.execute(stmt.returning(table.c.pk))
        pk = result.scalar()
        if pk is not None:
            return pk, True
        # Another process inserted it between our select and insert (PostgreSQL).
        return (await conn.execute(select(table.c.pk).where(*cond))).scalar_one(), False

    async def _series_for(self, conn: AsyncConnection, rec: InstanceRecord,
                          cache: MutableMapping[tuple[str, Any], int],
                          deltas: _Deltas) -> tuple[int, int]:
        key = ("series", rec.series_uid)
        if key in cache:
            return cache[key], cache[("study", rec.study_uid)]
        study_pk = cache.get(("study", rec.study_uid))
        if study_pk is None:
            patient = column_values(rec.json, Level.PATIENT)
            pid = {"patient_id": patient.pop("patient_id") or "",
                   "issuer_of_patient_id": patient.pop("issuer_of_patient_id") or ""}
            patient["patient_name_norm"] = normalize_pn(patient.get("patient_name"))
            patient_pk, _ = await self._get_or_create(conn, patients, pid, patient)
            study = column_values(rec.json, Level.STUDY)
            study.pop("study_uid")
            study["referring_physician_name_norm"] = normalize_pn(study.get("referring_physician_name"))
            study["patient_pk"] = patient_pk
            study_pk, _ = await self._get_or_create(conn, studies, {"study_uid": rec.study_uid}, study)
            cache[("study", rec.study_uid)] = study_pk
        ser = column_values(rec.json, Level.SERIES)
        ser.pop("series_uid")
        ser["study_pk"] = study_pk
        series_pk, created = await self._get_or_create(conn, series, {"series_uid": rec.series_uid}, ser)
        if created:
            deltas.study_series[study_pk] += 1
        deltas.studies_touched.add(study_pk)
        cache[key] = series_pk
        return series_pk, study_pk

    async def _apply(self, conn: AsyncConnection, d: _Deltas) -> None:
        for pk, n in d.series_instances.items():
            if n:
                await conn.execute(update(series).where(series.c.pk == pk).values(
                    num_instances=series.c.num_instances + n))
        for pk in d.series_removed_from:
            row = (await conn.execute(select(series.c.study_pk, series.c.num_instances)
                                      .where(series.c.pk == pk))).one()
            if row.num_instances == 0:  # its only instance moved to another series
                await conn.execute(delete(series).where(series.c.pk == pk))
                d.study_series[row.study_pk] -= 1
        for pk in d.studies_touched | set(d.study_instances):
            values: dict[str, Any] = {
                "num_instances": studies.c.num_instances + d.study_instances.get(pk, 0),
                "num_series": studies.c.num_series + d.study_series.get(pk, 0),
                "size": studies.c.size + d.study_size.get(pk, 0),
                "updated": func.now()}
            if d.study_series.get(pk, 0) or d.series_removed_from:  # the set of series changed
                modalities = (await conn.execute(
                    select(series.c.modality).distinct().where(
                        series.c.study_pk == pk, series.c.modality.is_not(None)))).scalars().all()
                values["modalities"] = "\\".join(sorted(m for m in modalities if m))
            await conn.execute(update(studies).where(studies.c.pk == pk).values(**values))
        for pk in set(d.study_instances) if d.series_removed_from else ():
            empty = (await conn.execute(select(studies.c.num_instances)
                                        .where(studies.c.pk == pk))).scalar_one() == 0
            if empty:  # its only instances moved to another study
                await conn.execute(delete(studies).where(studies.c.pk == pk))
