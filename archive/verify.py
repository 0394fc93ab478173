"""``imaging-archive verify [--repair]``: does storage hold what the index says, and nothing else?

Three kinds of problem:

- **missing**: an index row whose file is not in storage;
- **corrupt**: a file whose size differs from the row's, or (without ``--quick``) that no longer
  parses, or whose data set (the bytes after the File Meta) no longer has the SHA-256 the index
  recorded at ingest, or that holds another instance;
- **orphan**: a file in storage that no index row references (a crash between storage and index
  that the start-up recovery could not see, an index restored from an older backup).

``--repair``:

- an orphan is indexed in place (not rewritten) through the ingest pipeline's parse, record and
  index steps (harmonization and release state included), unless the index already has its SOP
  Instance UID: the same data set makes it a redundant copy, which is deleted; a different one
  is a conflict, left for the operator, as is an orphan that does not parse;
- a missing or corrupt instance's rows are removed from the index (with the series, study and
  patient it leaves empty, counts recomputed: archive.bulk.remove), and a corrupt file deleted:
  what cannot be served is no longer offered, and the instance can be sent again (while its row
  stays, a re-sent copy would be taken for a duplicate). Each is logged with its UIDs, and the
  report lists them for re-sending or restoring from a backup.

Everything goes through the BlobStore interface. Files are enumerated by walking the local folder
when the backend has local files (``local_path``), by a backend's ``list_recursive`` when it has
one, else folder by folder for the series the index knows (orphans elsewhere are then not seen,
and the report says so). A serving archive may write meanwhile: a candidate problem is checked
again before it is reported (batches being committed are in live journals; see archive.ingest).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from archive.bulk.remove import remove_instances
from archive.bulk.resources import Archive
from archive.dicom.part10 import InvalidInstance, parse_and_encode, parse_instance
from archive.index.schema import instances, series, studies
from archive.index.writer import Outcome
from archive.ingest import JOURNAL, instance_record, read_journal
from storage.base import BlobStore, StorageError, owner_alive

log = logging.getLogger("archive.verify")

MISSING, CORRUPT, ORPHAN = "missing", "corrupt", "orphan"
_JOBS = 4


@dataclass
class Problem:
    kind: str
    key: str
    detail: str
    sop_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    repaired: str | None = None  # what --repair did; None: the problem remains

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class VerifyReport:
    rows: int = 0  # index rows checked
    files: int = 0  # files found in storage
    hashed: bool = True  # data sets re-hashed (not --quick)
    complete_listing: bool = True  # every file of storage seen (see the module docstring)
    problems: list[Problem] = field(default_factory=list)

    @property
    def remaining(self) -> list[Problem]:
        return [p for p in self.problems if p.repaired is None]

    def to_json(self) -> dict[str, Any]:
        counts = {kind: sum(p.kind == kind for p in self.problems) for kind in (MISSING, CORRUPT, ORPHAN)}
        return {"rows": self.rows, "files": self.files, "hashed": self.hashed,
                "complete_listing": self.complete_listing, "counts": counts,
                "remaining": len(self.remaining), "problems": [p.fields() for p in self.problems]}


@dataclass(frozen=True)
class _Row:
    pk: int
    sop_uid: str
    storage_key: str
    size: int
    sha256: str
    series_uid: str
    study_uid: str


# -- listing ------------------------------------------------------------------------------------

def _walk(root: Path) -> dict[str, int | None]:
    """Every file below the store's data folder (journals aside): key -> size (blocking)."""
    found: dict[str, int | None] = {}
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        if rel == ".":
            dirs[:] = [d for d in dirs if d != JOURNAL]
        for name in files:
            key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
            try:
                found[key] = os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # deleted meanwhile (an overwrite, a delete)
                continue
    return found


async def _list_files(store: BlobStore, rows: list[_Row]) -> tuple[dict[str, int | None], bool]:
    """Stored keys (with their sizes when the listing gives them) and whether that is all of them."""
    probe = store.local_path(JOURNAL)
    if probe is not None:  # local files: the folder of the data, walked at once
        return await asyncio.to_thread(_walk, Path(probe).parent), True
    recursive = getattr(store, "list_recursive", None)
    if recursive is not None:
        return {k: None for k in await recursive("") if not k.startswith(JOURNAL + "/")}, True
    found: dict[str, int | None] = {}
    for folder in sorted({f"{r.study_uid}/{r.series_uid}" for r in rows}):
        found.update((k, None) for k in await store.list(folder))
    return found, False


async def _in_flight(store: BlobStore) -> set[str]:
    """Keys of the batches server processes are committing now (their live journals)."""
    keys: set[str] = set()
    for journal in await store.list(JOURNAL):
        if not owner_alive(journal.rsplit("/", 1)[-1]):
            continue  # a dead process's: the next start removes its blobs
        try:
            keys.update(k for _, k in await read_journal(store, journal))
        except (OSError, StorageError):  # committed and removed meanwhile
            continue
    return keys


def sop_of_key(key: str) -> str:
    """The SOP Instance UID in a storage key, ``{study}/{series}/{sop}.{unique}.dcm``."""
    return key.rsplit("/", 1)[-1].rsplit(".", 2)[0]


# -- checks -------------------------------------------------------------------------------------

@contextmanager
def _local_file(store: BlobStore, key: str) -> Iterator[str]:
    """A local path of the blob: its own, or a temporary copy from a remote backend (blocking)."""
    path = store.local_path(key)
    if path is not None:
        yield path
        return
    with tempfile.NamedTemporaryFile(suffix=".dcm") as tmp:
        with store.open_sync(key) as src:
            shutil.copyfileobj(src, tmp, 1 << 20)
        tmp.flush()
        yield tmp.name


def _check_content(store: BlobStore, row: _Row) -> str | None:
    """Why the file does not hold the row's instance, or None (blocking: parses and hashes)."""
    try:
        with _local_file(store, row.storage_key) as path:
            parsed = parse_instance(path, 0)
    except FileNotFoundError:
        return None  # removed meanwhile: the recheck decides
    except InvalidInstance as exc:
        return f"does not parse: {exc}"
    except (OSError, StorageError) as exc:
        return f"cannot be read: {exc}"
    if parsed.sop_instance_uid != row.sop_uid:
        return f"holds another instance ({parsed.sop_instance_uid})"
    if parsed.sha256 != row.sha256:
        return "its data set's SHA-256 differs from the one recorded at ingest"
    return None


async def _read_rows(archive: Archive) -> list[_Row]:
    stmt = (select(instances.c.pk, instances.c.sop_uid, instances.c.storage_key, instances.c.size,
                   instances.c.sha256, series.c.series_uid, studies.c.study_uid)
            .select_from(instances.join(series, instances.c.series_pk == series.c.pk)
                         .join(studies, series.c.study_pk == studies.c.pk))
            .order_by(instances.c.pk))
    async with archive.engine.connect() as conn:
        return [_Row(*r) for r in (await conn.execute(stmt)).all()]


async def _row_now(archive: Archive, pk: int) -> tuple[str, int] | None:
    """(storage key, size) of an instance row as it is now; None when it is gone."""
    async with archive.engine.connect() as conn:
        row = (await conn.execute(select(instances.c.storage_key, instances.c.size)
                                  .where(instances.c.pk == pk))).first()
    return (row[0], row[1]) if row is not None else None


class Verifier:
    def __init__(self, archive: Archive, quick: bool = False, jobs: int = _JOBS) -> None:
        self.archive = archive
        self.store = archive.store
        self.quick = quick
        self.jobs = jobs
        self.report = VerifyReport(hashed=not quick)

    async def run(self) -> VerifyReport:
        rows = await _read_rows(self.archive)
        files, complete = await _list_files(self.store, rows)
        self.report.rows, self.report.files, self.report.complete_listing = len(rows), len(files), complete
        pending = iter(rows)
        await asyncio.gather(*(self._check_rows(pending, files) for _ in range(self.jobs)))
        await self._find_orphans(files, {r.storage_key for r in rows})
        return self.report

    async def _check_rows(self, rows: Iterator[_Row], files: dict[str, int | None]) -> None:
        for row in rows:  # shared by the workers
            problem = await self._check_row(row, files)
            if problem is not None:
                self._add(Problem(problem[0], row.storage_key, problem[1], row.sop_uid, row.study_uid,
                                  row.series_uid))

    async def _check_row(self, row: _Row, files: dict[str, int | None]) -> tuple[str, str] | None:
        problem = await self._problem(row, files.get(row.storage_key, -1))
        if problem is None:
            return None
        # A serving archive may have replaced or deleted the instance since the rows were read.
        now = await _row_now(self.archive, row.pk)
        if now != (row.storage_key, row.size):
            return None
        if problem[0] == MISSING and await self.store.exists(row.storage_key):
            return None
        return problem

    async def _problem(self, row: _Row, size: int | None) -> tuple[str, str] | None:
        """(kind, detail) of what is wrong with the row's file; ``size`` as listed (-1: not
        listed, None: listed without sizes)."""
        if size is None:
            try:
                size = await self.store.size(row.storage_key)
            except FileNotFoundError:  # a backend's "no such blob" is one too (storage.s3)
                size = -1
            except (OSError, StorageError) as exc:
                return CORRUPT, f"cannot be read: {exc}"
        if size == -1:
            return MISSING, "no file in storage"
        if size != row.size:
            return CORRUPT, f"{size} bytes, the index recorded {row.size}"
        if self.quick:
            return None
        detail = await asyncio.to_thread(_check_content, self.store, row)
        return (CORRUPT, detail) if detail else None

    async def _find_orphans(self, files: dict[str, int | None], indexed: set[str]) -> None:
        candidates = [k for k in files if k not in indexed]
        if not candidates:
            return
        # Live journals first, then the index: a batch whose journal is gone is indexed by now.
        flying = await _in_flight(self.store)
        candidates = [k for k in candidates if k not in flying]
        now = await self.archive.ingest.writer.stored_keys(sorted({sop_of_key(k) for k in candidates}))
        for key in candidates:
            if key not in now and await self.store.exists(key):
                self._add(Problem(ORPHAN, key, "no index row references it", sop_of_key(key)))

    def _add(self, problem: Problem) -> None:
        self.report.problems.append(problem)
        log.warning("verify: %s %s sop=%s: %s", problem.kind, problem.key, problem.sop_uid, problem.detail,
                    extra={"problem": problem.kind, **problem.fields()})


# -- repair -------------------------------------------------------------------------------------

class Repairer:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.store = archive.store
        self.writer = archive.ingest.writer

    async def repair(self, report: VerifyReport) -> None:
        for problem in report.problems:
            if problem.kind == ORPHAN:
                problem.repaired = await self._orphan(problem)
        lost = [p for p in report.problems if p.kind in (MISSING, CORRUPT)]
        if lost:
            await self._remove(lost)
        for problem in report.problems:
            if problem.repaired:
                log.warning("verify --repair: %s %s sop=%s: %s", problem.kind, problem.key, problem.sop_uid,
                            problem.repaired, extra={"problem": problem.kind, **problem.fields()})

    async def _indexed_as(self, sop_uid: str) -> str | None:
        async with self.archive.engine.connect() as conn:
            return (await conn.execute(select(instances.c.sha256)
                                       .where(instances.c.sop_uid == sop_uid))).scalar()

    async def _orphan(self, problem: Problem) -> str | None:
        """Index the orphan in place; delete it if it is a copy of an indexed instance."""
        try:
            parsed, meta_json = await asyncio.to_thread(self._parse, problem.key)
        except (InvalidInstance, OSError) as exc:
            problem.detail += f"; does not parse: {exc}"
            return None
        problem.sop_uid, problem.study_uid = parsed.sop_instance_uid, parsed.study_uid
        problem.series_uid = parsed.series_uid
        indexed = await self._indexed_as(parsed.sop_instance_uid)
        if indexed == parsed.sha256:
            await self.store.delete(problem.key)
            return "deleted: a copy of an indexed instance"
        if indexed is not None:  # never replace an indexed instance by a stray file
            problem.detail += "; the index holds a different data set under its SOP Instance UID"
            return None
        size = await self.store.size(problem.key)
        added = (await self.writer.add([instance_record(parsed, meta_json, size, problem.key)]))[0]
        if added.outcome is Outcome.STORED:
            return "indexed"
        problem.detail += f"; not indexed ({added.outcome.value}: stored meanwhile?)"
        return None

    def _parse(self, key: str) -> tuple[Any, bytes]:
        with _local_file(self.store, key) as path:
            return parse_and_encode(path, self.archive.cfg.ingest.bulk_data_threshold, None)

    async def _remove(self, lost: list[Problem]) -> None:
        """Remove the rows of missing and corrupt instances in one transaction, then the corrupt
        files (safe beside running servers: their index writers keep no row ids between
        transactions)."""
        async with self.archive.engine.connect() as conn:
            pks = dict((await conn.execute(select(instances.c.storage_key, instances.c.pk).where(
                instances.c.storage_key.in_([p.key for p in lost])))).all())
        async with self.archive.engine.begin() as conn:
            removed = await conn.run_sync(remove_instances, [pks[p.key] for p in lost if p.key in pks])
        for problem in lost:
            if problem.key not in pks:
                continue
            if problem.kind == CORRUPT:
                await self.store.delete(problem.key)
            problem.repaired = ("index rows removed" if problem.kind == MISSING
                                else "index rows and the corrupt file removed") + ": restore or send it again"
        if removed.patients:
            log.warning("verify --repair: patients left without studies removed: %s",
                        ", ".join(removed.patients), extra={"patient_ids": removed.patients})
