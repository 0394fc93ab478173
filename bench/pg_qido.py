"""QIDO-RS study search latency at 100,000 studies / 1,000,000 instances, on PostgreSQL and SQLite.

    python bench/pg_qido.py [--studies 100000] [--instances 1000000] [--queries-per-kind 50]
                            [--engines postgresql,sqlite] [--url postgresql+asyncpg://...]
                            [--workdir DIR] [--keep] [--no-fill]

The index is filled without DICOM files (a QIDO-RS search reads only the index): a catalog of
studies (bench/datasets.py's names, descriptions, modalities and UIDs; half as many patients as
studies, 1-4 series a study, ~10 instances a study) becomes, instance by instance, the DICOM JSON
ingest makes of a small image, and from it the rows by the index writer's own functions
(archive/index/writer.py: the patient, study, series and instance rows of a new instance, with
its compressed metadata; counts and modalities as the writer sums them; the harmonized procedure
as ingest places it). The rows go in with explicit keys, by COPY on PostgreSQL (asyncpg) and by
multi-row INSERTs on SQLite, after the archive made the empty index (tables and indexes at the
head revision). PostgreSQL then gets VACUUM ANALYZE (what autovacuum does after a bulk load);
SQLite is left as the archive leaves it (it never runs ANALYZE).

Then the archive serves each index (``python -m archive serve``, one process) and the queries go
over HTTP, one at a time on one keep-alive connection (bench/qido.py's client and checks): a
shuffled mix of study searches, each answer checked against the catalog (``--queries-per-kind``
of each kind):

  patient_id        PatientID=PID0012345                  (exact)
  name_prefix       PatientName=smi*&limit=100            (case-insensitive prefix)
  name_contains     PatientName=*ILLIA*&limit=100         (leading wildcard)
  study_date        StudyDate=one week&limit=100
  modality          ModalitiesInStudy=MR&limit=100
  description       StudyDescription=*CHEST PA*&limit=100
  date_modality     StudyDate=one month&ModalitiesInStudy=US&limit=100
  paging            limit=50&offset=K                     (K anywhere in the archive)

Without ``--url`` a throw-away PostgreSQL server is started (tests/pg.py: Debian's postgresql
package) with 512 MB of shared buffers; with it, the database must be empty. ``--no-fill`` measures
again indexes an earlier run filled and kept (``--url``, ``--workdir DIR --keep``, the same sizes
and seed): on a busy machine the figures move with the load, the index does not. Prints p50/p95
per kind and over all, beside the target (p95 < 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import datetime as dt
import json
import os
import random
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import qido
import report
import servers
from datasets import DESCRIPTIONS, FAMILY_NAMES, GIVEN_NAMES, SOP_CLASSES, SeriesRecord, StudyRecord, make_uid
from sqlalchemy import text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests/pg.py: the throw-away PostgreSQL server

from archive.harmonize import Harmonizer  # noqa: E402
from archive.index.db import create_engine, init_schema  # noqa: E402
from archive.index.procedures import placement_values  # noqa: E402
from archive.index.writer import IndexWriter, InstanceRecord, _patient_row, _series_row, _study_row  # noqa: E402
from tests import pg  # noqa: E402

TARGET_P95_MS = 50.0
LIMIT = 100
PAGE = 50
TINY = 8  # rows and columns of the instances described
CHUNK = 20_000  # instance rows per COPY / INSERT batch
KINDS = ("patient_id", "name_prefix", "name_contains", "study_date", "modality", "description",
         "date_modality", "paging")
DESCRIPTION_PATTERNS = ("*CHEST PA*", "*W/O CONTRAST*", "*2 VIEWS*", "*ABDOMEN COMPLETE*", "*BRAIN W*",
                        "*LUMBAR SPINE*")
TABLES = ("patients", "studies", "series", "instances")


# ------------------------------------------------------------------------------------ catalog

def plan(n_studies: int, n_instances: int, seed: int) -> list[StudyRecord]:
    """``n_studies`` studies holding ``n_instances`` instances in all (1-4 series each)."""
    rng = random.Random(seed)
    patients = [(f"PID{p:07d}", f"{rng.choice(FAMILY_NAMES)}^{rng.choice(GIVEN_NAMES)}")
                for p in range(max(1, n_studies // 2))]
    per_study = n_instances / n_studies
    counts = [max(1, round(rng.uniform(1, 2 * per_study - 1))) for _ in range(n_studies)]
    drift = n_instances - sum(counts)  # spread what rounding left, one instance at a time
    for i in range(abs(drift)):
        k = i % n_studies
        counts[k] = max(1, counts[k] + (1 if drift > 0 else -1))
    studies = []
    for s, total in enumerate(counts):
        pid, name = rng.choice(patients)
        modality = rng.choice(list(SOP_CLASSES))
        date = dt.date(2005, 1, 1) + dt.timedelta(days=rng.randint(0, 7304))
        study = StudyRecord(make_uid("pg-study", n_studies, seed, s), pid, name, date.strftime("%Y%m%d"),
                            rng.choice(DESCRIPTIONS[modality]))
        n_series = rng.randint(1, min(4, total))
        cuts = sorted(rng.sample(range(1, total), n_series - 1)) if n_series > 1 else []
        for k, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, total], strict=True)):
            study.series.append(SeriesRecord(make_uid("pg-series", study.uid, k), modality, hi - lo))
        studies.append(study)
    return studies


def _value(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def instance_json(study: StudyRecord, number: int, sn: int, series: SeriesRecord, k: int) -> dict[str, Any]:
    """The DICOM JSON ingest stores for a small image (bench/datasets.py's tiny instance), pixel
    data as a BulkDataURI."""
    sop_uid = make_uid("pg-sop", series.uid, k)
    return {
        "00080005": _value("CS", "ISO_IR 100"), "00080008": _value("CS", "ORIGINAL", "PRIMARY"),
        "00080016": _value("UI", SOP_CLASSES[series.modality]), "00080018": _value("UI", sop_uid),
        "00080020": _value("DA", study.date), "00080021": _value("DA", study.date),
        "00080030": _value("TM", "093000"), "00080050": _value("SH", f"ACC{number:08d}"),
        "00080060": _value("CS", series.modality), "00080070": _value("LO", "BENCH MEDICAL"),
        "00080090": _value("PN", {"Alphabetic": "REFERRER^ROSA"}),
        "00081030": _value("LO", study.description),
        "0008103E": _value("LO", f"{series.modality} SERIES {sn}"),
        "00100010": _value("PN", {"Alphabetic": study.patient_name}),
        "00100020": _value("LO", study.patient_id),
        "00100030": _value("DA", "19700101"), "00100040": _value("CS", "O"),
        "0020000D": _value("UI", study.uid), "0020000E": _value("UI", series.uid),
        "00200010": _value("SH", str(number % 10**8)), "00200011": _value("IS", sn),
        "00200013": _value("IS", k + 1), "00280002": _value("US", 1),
        "00280004": _value("CS", "MONOCHROME2"),
        "00280010": _value("US", TINY), "00280011": _value("US", TINY), "00280100": _value("US", 16),
        "00280101": _value("US", 16), "00280102": _value("US", 15), "00280103": _value("US", 0),
        "7FE00010": {"vr": "OW", "BulkDataURI": f"{{base}}/studies/{study.uid}/series/{series.uid}/"
                                                f"instances/{sop_uid}/bulk/7FE00010"},
    }


def _record(doc: dict[str, Any], study: StudyRecord, series: SeriesRecord) -> InstanceRecord:
    sop_uid = doc["00080018"]["Value"][0]
    meta = zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 6)
    return InstanceRecord(study.uid, series.uid, sop_uid, SOP_CLASSES[series.modality], "1.2.840.10008.1.2.1",
                          doc, meta, {"7FE00010": [1000, 2 * TINY * TINY]}, None, "0" * 64,
                          1200, f"{study.uid}/{series.uid}/{sop_uid}.dcm")


class Rows:
    """The index rows of the catalog, made by the writer's functions, with explicit keys."""

    def __init__(self, studies: list[StudyRecord]) -> None:
        self.studies = studies
        self.harmonizer = Harmonizer.load()
        self.parents: dict[str, list[dict[str, Any]]] = {"patients": [], "studies": [], "series": []}
        self.instances = sum(s.instances for s in studies)

    def parent_rows(self) -> None:
        patient_pk: dict[str, int] = {}
        series_pk = 0
        for number, study in enumerate(self.studies, start=1):
            first = _record(instance_json(study, number, 1, study.series[0], 0), study, study.series[0])
            if study.patient_id not in patient_pk:
                patient_pk[study.patient_id] = len(patient_pk) + 1
                self.parents["patients"].append({**_patient_row(first), "pk": patient_pk[study.patient_id],
                                                 "release_state": "open"})
            placement = self.harmonizer.place(sorted(study.modalities), study.description, "",
                                              study.instances)
            self.parents["studies"].append({
                **_study_row(first, patient_pk[study.patient_id]), "pk": number,
                "modalities": "\\".join(sorted(study.modalities)), "num_series": len(study.series),
                "num_instances": study.instances, "size": 1200 * study.instances,
                **placement_values(placement)})
            for sn, series in enumerate(study.series, start=1):
                series_pk += 1
                doc = instance_json(study, number, sn, series, 0)
                self.parents["series"].append({**_series_row(_record(doc, study, series), number),
                                               "pk": series_pk, "num_instances": series.instances})

    def instance_chunks(self) -> Iterator[list[dict[str, Any]]]:
        chunk: list[dict[str, Any]] = []
        series_pk = pk = 0
        for number, study in enumerate(self.studies, start=1):
            for sn, series in enumerate(study.series, start=1):
                series_pk += 1
                for k in range(series.instances):
                    pk += 1
                    rec = _record(instance_json(study, number, sn, series, k), study, series)
                    chunk.append({**IndexWriter._instance_row(rec, series_pk), "pk": pk})
                    if len(chunk) == CHUNK:
                        yield chunk
                        chunk = []
        if chunk:
            yield chunk


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(rows[0])


# ---------------------------------------------------------------------------------- loaders

class PostgresLoader:
    def __init__(self, url: str) -> None:
        u = make_url(url)
        self.connect = {"host": u.host, "port": u.port or 5432, "user": u.username, "password": u.password,
                        "database": u.database}
        self.conn: asyncpg.Connection | None = None

    async def open(self) -> None:
        self.conn = await asyncpg.connect(**self.connect)

    async def load(self, table: str, rows: list[dict[str, Any]]) -> None:
        assert self.conn is not None
        columns = _columns(rows)
        await self.conn.copy_records_to_table(table, columns=columns,
                                              records=[tuple(r[c] for c in columns) for r in rows])

    async def finish(self) -> None:
        assert self.conn is not None
        for table in TABLES:  # the keys were given: move each sequence past them
            await self.conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'), "
                                    f"(SELECT max(pk) FROM {table}))")
        await self.conn.execute("VACUUM ANALYZE")
        await self.conn.close()

    async def size(self) -> int:
        conn = await asyncpg.connect(**self.connect)
        try:
            return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
        finally:
            await conn.close()


class SqliteLoader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        self.conn = sqlite3.connect(self.path)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=OFF")  # set-up only: the server runs with FULL

    async def load(self, table: str, rows: list[dict[str, Any]]) -> None:
        assert self.conn is not None
        columns = _columns(rows)
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        self.conn.executemany(sql, (tuple(r[c] for c in columns) for r in rows))
        self.conn.commit()

    async def finish(self) -> None:
        assert self.conn is not None
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()

    async def size(self) -> int:
        return self.path.stat().st_size


async def fill(rows: Rows, loaders: dict[str, Any]) -> dict[str, float]:
    """Every row into every index; seconds spent per engine (the row making is shared)."""
    spent = dict.fromkeys(loaders, 0.0)

    async def load(table: str, chunk: list[dict[str, Any]]) -> None:
        for name, loader in loaders.items():
            start = time.perf_counter()
            await loader.load(table, chunk)
            spent[name] += time.perf_counter() - start

    for loader in loaders.values():
        await loader.open()
    rows.parent_rows()
    for table in ("patients", "studies", "series"):
        for i in range(0, len(rows.parents[table]), CHUNK):
            await load(table, rows.parents[table][i:i + CHUNK])
    done = 0
    for chunk in rows.instance_chunks():
        await load("instances", chunk)
        done += len(chunk)
        if done % 200_000 < CHUNK:
            print(f"  {done:,} / {rows.instances:,} instances", flush=True)
    for name, loader in loaders.items():
        start = time.perf_counter()
        await loader.finish()
        spent[name] += time.perf_counter() - start
    return spent


async def make_index(url: str) -> None:
    """The empty index at the head revision, as the archive makes it."""
    engine = create_engine(url)
    try:
        await init_schema(engine)
        async with engine.connect() as conn:
            for table in TABLES:
                n = (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
                if n:
                    raise SystemExit(f"the database at {url} is not empty ({table}: {n} rows)")
    finally:
        await engine.dispose()


# ---------------------------------------------------------------------------------- queries

def _names(studies: list[StudyRecord]) -> list[str]:
    return [s.patient_name.upper() for s in studies]


def _matching(studies: list[StudyRecord], test: Callable[[StudyRecord], bool]) -> int:
    return min(LIMIT, sum(1 for s in studies if test(s)))


def _has(key: str, test: Callable[[Any], bool]) -> qido.Check:
    def check(objs: list[dict]) -> str | None:
        for obj in objs:
            values = obj.get(key, {}).get("Value", [])
            if not test(values):
                return f"{key} is {values!r}: not what was asked for"
        return None
    return check


def build_queries(studies: list[StudyRecord], per_kind: int, seed: int = 11) -> list[qido.Query]:
    rng = random.Random(seed)
    by_pid = Counter(s.patient_id for s in studies)
    queries: list[qido.Query] = []
    for _ in range(per_kind):
        pid = rng.choice(studies).patient_id
        queries.append(qido.Query("patient_id", f"/studies?{qido._qs(PatientID=pid)}", by_pid[pid],
                                  _has("00100020", lambda v, p=pid: v == [p])))
        prefix = rng.choice(studies).patient_name.split("^")[0][:3]
        queries.append(qido.Query(
            "name_prefix", f"/studies?{qido._qs(PatientName=prefix.lower() + '*', limit=LIMIT)}",
            _matching(studies, lambda s, p=prefix: s.patient_name.upper().startswith(p)),
            _has("00100010", lambda v, p=prefix: v[0]["Alphabetic"].upper().startswith(p))))
        family = rng.choice(studies).patient_name.split("^")[0]
        infix = family[1:4] if len(family) > 4 else family
        queries.append(qido.Query(
            "name_contains", f"/studies?{qido._qs(PatientName=f'*{infix}*', limit=LIMIT)}",
            _matching(studies, lambda s, i=infix: i in s.patient_name.upper()),
            _has("00100010", lambda v, i=infix: i in v[0]["Alphabetic"].upper())))
        day = dt.datetime.strptime(rng.choice(studies).date, "%Y%m%d")  # a week from a study's date
        lo, hi = day.strftime("%Y%m%d"), (day + dt.timedelta(days=6)).strftime("%Y%m%d")
        queries.append(qido.Query(
            "study_date", f"/studies?{qido._qs(StudyDate=f'{lo}-{hi}', limit=LIMIT)}",
            _matching(studies, lambda s, a=lo, b=hi: a <= s.date <= b),
            _has("00080020", lambda v, a=lo, b=hi: a <= v[0] <= b)))
        modality = rng.choice(sorted(SOP_CLASSES))
        queries.append(qido.Query(
            "modality", f"/studies?{qido._qs(ModalitiesInStudy=modality, limit=LIMIT)}",
            _matching(studies, lambda s, m=modality: m in s.modalities),
            _has("00080061", lambda v, m=modality: m in v)))
        pattern = rng.choice(DESCRIPTION_PATTERNS)
        words = pattern.strip("*")
        queries.append(qido.Query(
            "description", f"/studies?{qido._qs(StudyDescription=pattern, limit=LIMIT)}",
            _matching(studies, lambda s, w=words: w in s.description),
            _has("00081030", lambda v, w=words: w in v[0])))
        month = rng.choice(studies).date[:6]
        mlo, mhi = month + "01", f"{month}{calendar.monthrange(int(month[:4]), int(month[4:]))[1]:02d}"
        modality = rng.choice(sorted(SOP_CLASSES))
        queries.append(qido.Query(
            "date_modality",
            f"/studies?{qido._qs(StudyDate=f'{mlo}-{mhi}', ModalitiesInStudy=modality, limit=LIMIT)}",
            _matching(studies, lambda s, a=mlo, b=mhi, m=modality: a <= s.date <= b and m in s.modalities)))
        offset = rng.randint(0, len(studies) - PAGE)
        queries.append(qido.Query("paging", f"/studies?{qido._qs(limit=PAGE, offset=offset)}", PAGE))
    rng.shuffle(queries)
    return queries


def measure(name: str, url: str, run_dir: Path, studies: list[StudyRecord], per_kind: int,
            port: int) -> qido.QidoResult:
    archive = servers.Archive(run_dir, port, database_url=url)
    archive.start()
    try:
        base = archive.base
        queries = build_queries(studies, per_kind)
        # Warm-up: one pass over a tenth of the mix (caches, prepared statements), not counted.
        asyncio.run(qido.run_queries(base, queries[: max(10, len(queries) // 10)], warmup=0))
        return asyncio.run(qido.run_queries(base, queries, warmup=0))
    finally:
        archive.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary(name: str, result: qido.QidoResult) -> tuple[float, float]:
    rows = []
    everything: list[float] = []
    for kind in KINDS:
        times = result.latencies_ms.get(kind, [])
        everything += times
        counts = result.results.get(kind, [])
        rows.append((kind, f"{report.percentile(times, 50):.1f}", f"{report.percentile(times, 95):.1f}",
                     f"{report.percentile(times, 100):.1f}", f"{sum(counts) / max(1, len(counts)):.1f}"))
    p50, p95 = report.percentile(everything, 50), report.percentile(everything, 95)
    rows.append(("all study searches", f"{p50:.1f}", f"{p95:.1f}",
                 f"{report.percentile(everything, 100):.1f}", ""))
    report.section(f"QIDO-RS on {name} ({len(everything)} queries)")
    print(report.table(rows, ("kind", "p50 ms", "p95 ms", "max ms", "mean results")))
    return p50, p95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--queries-per-kind", type=int, default=50)
    parser.add_argument("--engines", default="postgresql,sqlite", help="comma list: postgresql, sqlite")
    parser.add_argument("--url", help="an empty PostgreSQL database to use (default: a throw-away server)")
    parser.add_argument("--workdir", type=Path, help="where the SQLite index and server folders go")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--no-fill", action="store_true", help="measure indexes filled by an earlier run")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pg-qido-"))
    work.mkdir(parents=True, exist_ok=True)
    cluster = None
    problems: list[str] = []
    figures: dict[str, tuple[float, float]] = {}
    try:
        urls: dict[str, str] = {}
        if "postgresql" in engines:
            if args.url:
                urls["postgresql"] = args.url
            else:
                bindir = pg.find_bindir()
                if bindir is None:
                    raise SystemExit("PostgreSQL is not installed (Debian package postgresql); or give --url")
                cluster = pg.Cluster(bindir, {"shared_buffers": "512MB", "effective_cache_size": "4GB",
                                              "work_mem": "16MB", "maintenance_work_mem": "256MB",
                                              "max_wal_size": "4GB"})
                cluster.start()
                urls["postgresql"] = cluster.url(cluster.new_database(template=None))
        if "sqlite" in engines:
            urls["sqlite"] = f"sqlite+aiosqlite:///{work / 'index.db'}"
        t0 = time.perf_counter()
        studies = plan(args.studies, args.instances, args.seed)
        print(f"catalog: {len(studies):,} studies, {len({s.patient_id for s in studies}):,} patients, "
              f"{sum(len(s.series) for s in studies):,} series, {sum(s.instances for s in studies):,} "
              f"instances ({time.perf_counter() - t0:.1f} s)", flush=True)
        loaders: dict[str, Any] = {name: PostgresLoader(url) if name == "postgresql" else
                                   SqliteLoader(work / "index.db") for name, url in urls.items()}
        if not args.no_fill:
            for url in urls.values():
                asyncio.run(make_index(url))
            t0 = time.perf_counter()
            spent = asyncio.run(fill(Rows(studies), loaders))
            print(f"filled in {time.perf_counter() - t0:.0f} s (loading: "
                  + ", ".join(f"{n} {s:.0f} s" for n, s in spent.items()) + "; the rest: making the rows)")
        for name, loader in loaders.items():
            print(f"{name} index: {asyncio.run(loader.size()) / 1e6:,.0f} MB")
        for name, url in urls.items():
            print(f"measuring {name}: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
                  flush=True)
            result = measure(name, url, work / f"run-{name}", studies, args.queries_per_kind, _free_port())
            figures[name] = summary(name, result)
            problems += [f"{name} {f.kind} {f.path}: {f.status} {f.detail}" for f in result.failures[:20]]
    finally:
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report.section("targets")
    for name, (p50, p95) in figures.items():
        verdict = "PASS" if p95 < TARGET_P95_MS else "FAIL"
        print(f"{name}: study search p50 {p50:.1f} ms, p95 {p95:.1f} ms "
              f"(target p95 < {TARGET_P95_MS:.0f} ms: {verdict})")
    if problems:
        report.section("problems")
        print("\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
