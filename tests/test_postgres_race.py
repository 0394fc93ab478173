"""Several writers on one PostgreSQL index (serve --workers, several hosts): two writers storing
instances of the same new patient, study and series at the same moment neither fail nor make a
row twice, and the counts are exact. First two index writers with connection pools of their
own (two processes, as far as PostgreSQL can tell), then two server processes on one database
and one storage folder, over STOW-RS."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from archive.harmonize import Harmonizer
from archive.index.db import create_engine
from archive.index.schema import instances, patients, series, studies
from archive.index.writer import IndexWriter, InstanceRecord, Outcome
from tests import pg, synth
from tests.conftest import LiveServer, multipart

pytestmark = pytest.mark.databases("postgresql")

CT = "1.2.840.10008.5.1.4.1.1.2"
ROUNDS = 6  # new studies raced for
SERIES = 4
PER_SERIES = 30
SHARED = 10  # instances of each round both writers store (the same data set)


def _record(study: str, series_uid: str, sop: str, pid: str, modality: str, number: int) -> InstanceRecord:
    doc = {"0020000D": {"vr": "UI", "Value": [study]}, "0020000E": {"vr": "UI", "Value": [series_uid]},
           "00080018": {"vr": "UI", "Value": [sop]}, "00080016": {"vr": "UI", "Value": [CT]},
           "00100020": {"vr": "LO", "Value": [pid]},
           "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Race^Two"}]},
           "00081030": {"vr": "LO", "Value": ["CT CHEST W/O CONTRAST"]},
           "00080060": {"vr": "CS", "Value": [modality]}, "00200013": {"vr": "IS", "Value": [number]}}
    return InstanceRecord(study, series_uid, sop, CT, "1.2.840.10008.1.2.1", doc,
                          zlib.compress(json.dumps(doc).encode()), {}, None,
                          hashlib.sha256(sop.encode()).hexdigest(), 1000, f"race/{sop}")


def _round(n: int) -> tuple[str, list[str], list[InstanceRecord]]:
    study, pid = synth.uid(), f"RACE-{n}"
    series_uids = [synth.uid() for _ in range(SERIES)]
    records = [_record(study, s, synth.uid(), pid, "CT" if k % 2 else "MR", i + 1)
               for k, s in enumerate(series_uids) for i in range(PER_SERIES)]
    return study, series_uids, records


async def _feed(writer: IndexWriter, records: list[InstanceRecord], batch: int) -> list[tuple[str, Outcome]]:
    out = []
    for i in range(0, len(records), batch):
        chunk = records[i:i + batch]
        out += [(r.sop_uid, a.outcome) for r, a in zip(chunk, await writer.add(chunk), strict=True)]
    return out


async def _counts(engine: AsyncEngine, study: str, pid: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(select(studies.c.pk, studies.c.num_series, studies.c.num_instances,
                                          studies.c.size, studies.c.modalities, studies.c.loinc_code)
                                   .where(studies.c.study_uid == study))).one()
        per_series = (await conn.execute(
            select(series.c.num_instances, func.count(instances.c.pk))
            .join(instances, instances.c.series_pk == series.c.pk, isouter=True)
            .where(series.c.study_pk == row.pk).group_by(series.c.pk))).all()
        n_patients = (await conn.execute(select(func.count()).select_from(patients)
                                         .where(patients.c.patient_id == pid))).scalar_one()
        n_studies = (await conn.execute(select(func.count()).select_from(studies)
                                        .where(studies.c.study_uid == study))).scalar_one()
    return {"patients": n_patients, "studies": n_studies, "series": row.num_series,
            "instances": row.num_instances, "size": row.size, "modalities": row.modalities,
            "code": row.loinc_code, "per_series": sorted(tuple(r) for r in per_series)}


async def test_two_writers_store_the_same_new_study_at_once(tmp_path: Path) -> None:
    url = pg.database_url(tmp_path)
    harmonizer = Harmonizer.load()
    engines = [create_engine(url), create_engine(url)]
    writers = [IndexWriter(e, harmonizer=harmonizer) for e in engines]
    rng = random.Random(8)
    try:
        for n in range(ROUNDS):
            study, _, records = _round(n)
            rng.shuffle(records)
            shared, rest = records[:SHARED], records[SHARED:]
            # Both writers start on the new study together, in batches of different sizes; each
            # also stores the shared instances, in another order than the other.
            mine = [shared + rest[0::2], list(reversed(shared)) + rest[1::2]]
            done = await asyncio.gather(_feed(writers[0], mine[0], 7), _feed(writers[1], mine[1], 11))
            outcomes = [o for d in done for o in d]
            stored = [sop for sop, o in outcomes if o is Outcome.STORED]
            assert sorted(stored) == sorted(r.sop_uid for r in records)  # each once, none lost
            assert sorted(sop for sop, o in outcomes if o is not Outcome.STORED) == \
                sorted(r.sop_uid for r in shared)  # the second copy: identical, not an error
            assert {o for _, o in outcomes} <= {Outcome.STORED, Outcome.IDENTICAL}
            assert await _counts(engines[0], study, f"RACE-{n}") == {
                "patients": 1, "studies": 1, "series": SERIES, "instances": SERIES * PER_SERIES,
                "size": SERIES * PER_SERIES * 1000, "modalities": "CT\\MR", "code": "29252-4",
                "per_series": [(PER_SERIES, PER_SERIES)] * SERIES}
    finally:
        for w in writers:
            w.close()
        for e in engines:
            await e.dispose()


def _stow(url: str, parts: list[bytes]) -> None:
    for i in range(0, len(parts), 5):
        body, ctype = multipart(parts[i:i + 5])
        resp = requests.post(f"{url}/dicom-web/studies", data=body, headers={"Content-Type": ctype},
                             timeout=60)
        assert resp.status_code == 200, resp.text


def test_two_servers_store_one_new_study_at_once(tmp_path: Path) -> None:
    roots = [tmp_path / "a", tmp_path / "b"]
    for r in roots:
        r.mkdir()
    servers = [LiveServer(r) for r in roots]
    # The second server: the first one's database and storage folder.
    config = servers[1].config.read_text(encoding="utf-8")
    config = config.replace(pg.database_url(roots[1]), pg.database_url(roots[0]))
    servers[1].config.write_text(config.replace('path = "files"', f'path = "{roots[0] / "files"}"'),
                                 encoding="utf-8")
    study, pid = synth.uid(), "RACE-HTTP"
    series_uids = [synth.uid() for _ in range(3)]
    parts = [synth.instance(study=study, series=s, patient_id=pid, instance_number=i + 1)
             for s in series_uids for i in range(20)]
    random.Random(3).shuffle(parts)
    try:
        for s in servers:
            s.start()
        with ThreadPoolExecutor(2) as pool:
            jobs = [pool.submit(_stow, s.url, parts[k::2] + parts[:5]) for k, s in enumerate(servers)]
            for job in jobs:
                job.result()
        for s in servers:  # either server sees the whole study, once
            found = requests.get(f"{s.url}/dicom-web/studies", params={"PatientID": pid}, timeout=30).json()
            assert len(found) == 1
            assert found[0]["00201206"]["Value"] == [3] and found[0]["00201208"]["Value"] == [60]
            listed = requests.get(f"{s.url}/dicom-web/studies/{study}/instances", timeout=30).json()
            assert len({i["00080018"]["Value"][0] for i in listed}) == len(listed) == 60
        # Stored through one, retrieved through the other.
        resp = requests.get(f"{servers[1].url}/dicom-web/studies/{study}", timeout=60,
                            headers={"Accept": 'multipart/related; type="application/dicom"'})
        assert resp.status_code == 200 and resp.content.count(b"DICM") == 60
    finally:
        for s in servers:
            s.stop()
