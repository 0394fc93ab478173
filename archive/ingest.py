"""The one ingest pipeline: every way in (STOW-RS, C-STORE, bulk import) calls it.

For each instance: stream the bytes into a staged blob (hashing the data set on the way), parse and
validate it in an executor thread, build its DICOM JSON, commit the blob under a key made of its
UIDs; then, for a whole batch, one index transaction. Only after that commit is anything reported
as stored. A failure at any step leaves no trace: staged or orphaned blobs are removed.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import sqlite3
import struct
import uuid
from collections.abc import AsyncIterable, Callable
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from archive import metrics
from archive.deid import DeidConfig, DeidResult
from archive.deid.worker import Sent, deidentify_and_parse
from archive.dicom.part10 import (
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH,
    InvalidInstance,
    ParsedInstance,
    parse_and_encode,
    parse_many,
    worker_ready,
)
from archive.index.db import sqlstate
from archive.index.writer import IndexWriter, InstanceRecord, Outcome
from storage.base import BlobStore, BlobWriter, StorageError, StorageFullError, owner_alive, owner_name

log = logging.getLogger("archive.ingest")
T = TypeVar("T")


# Most instances one group commit takes (bounds the index transaction).
_GROUP_MAX = 500
# Group commits under way at once (see Ingest._commit_queued).
_GROUPS_IN_FLIGHT = 2
_PARSE_BATCH = 32  # instances per call to a parse worker process, at most
# A file to parse: its path, the digest of its data set as received, who waits for the outcome.
_ParseJob = tuple[str, tuple[int, str] | None, "asyncio.Future[Any]"]

# Storage folder of the batch intents (see Ingest.recover); UIDs never start with a letter.
JOURNAL = "journal"

# Failure reasons (PS3.18 Table 10.5.3-2 refers to the PS3.4 Annex B C-STORE statuses).
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111


@dataclass
class IngestResult:
    """What happened to one instance; ``status`` 0 means stored (or already stored)."""

    status: int
    message: str = ""
    sop_class_uid: str | None = None
    sop_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    outcome: Outcome | None = None
    # De-identified (archive.deid): stored under pseudonyms; the sender's SOP Instance UID, for
    # its answer (STOW-RS Warning Reason / C-STORE status 0xB000, coercion of data elements).
    coerced: bool = False
    sent_sop_uid: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 0


@dataclass(frozen=True)
class Expected:
    """What the sender said the instance is; a data set that differs is refused (0xA900)."""

    study_uid: str | None = None  # STOW-RS to /studies/{study}
    sop_class_uid: str | None = None  # C-STORE Affected SOP Class UID
    sop_uid: str | None = None  # C-STORE Affected SOP Instance UID

    def mismatch(self, parsed: ParsedInstance | Sent) -> str | None:
        sop_uid = parsed.sop_uid if isinstance(parsed, Sent) else parsed.sop_instance_uid
        if self.study_uid is not None and parsed.study_uid != self.study_uid:
            return "StudyInstanceUID differs from the study in the request URL"
        if self.sop_class_uid is not None and parsed.sop_class_uid != self.sop_class_uid:
            return "SOPClassUID differs from the Affected SOP Class UID of the request"
        if self.sop_uid is not None and sop_uid != self.sop_uid:
            return "SOPInstanceUID differs from the Affected SOP Instance UID of the request"
        return None


@dataclass
class Staged:
    """The bytes of one instance, received into a staged blob (not yet parsed)."""

    blob: BlobWriter
    digest: DatasetDigest


@dataclass
class Prepared:
    """A parsed, valid instance whose staged blob awaits commit; indexing decides its fate."""

    blob: BlobWriter
    record: InstanceRecord
    result: IngestResult


class DatasetDigest:
    """sha256 of the bytes after the File Meta, computed as the bytes stream by.

    The data set (not the whole file) is hashed so that the same instance sent again with another
    File Meta (a STOW-RS file, then a C-STORE whose meta we rebuild) is recognized as identical.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self._pos = 0
        self.skip: int | None = None
        self.valid = True

    def update(self, data: bytes) -> None:
        if self.skip is None:
            self._head += data
            self._pos += len(data)
            if len(self._head) < 144:
                return
            head = bytes(self._head)
            self._head = bytearray()
            if head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
                self.valid = False
                self.skip = -1
                return
            self.skip = 144 + struct.unpack("<L", head[140:144])[0]
            if len(head) > self.skip:
                self._hash.update(head[self.skip:])
            return
        start = self._pos
        self._pos += len(data)
        if not self.valid:
            return
        if start >= self.skip:
            self._hash.update(data)
        elif self._pos > self.skip:
            self._hash.update(data[self.skip - start:])

    def result(self) -> tuple[int, str] | None:
        """(offset hashed from, sha256), or None if the head was not a Part 10 File Meta."""
        if not self.valid or self.skip is None or self._pos < self.skip:
            return None
        return self.skip, self._hash.hexdigest()


def storage_key(parsed: ParsedInstance) -> str:
    """Unique per write, so a blob is never replaced in place (see IndexWriter for why)."""
    return (f"{parsed.study_uid}/{parsed.series_uid}/"
            f"{parsed.sop_instance_uid}.{uuid.uuid4().hex[:12]}.dcm")


def instance_record(parsed: ParsedInstance, meta_json: bytes, size: int, key: str,
                    deid: DeidResult | None = None) -> InstanceRecord:
    """What the index records of a parsed instance stored under ``key`` (also used by ``verify
    --repair`` to index a stored file the index lacks)."""
    return InstanceRecord(
        study_uid=parsed.study_uid, series_uid=parsed.series_uid,
        sop_uid=parsed.sop_instance_uid, sop_class_uid=parsed.sop_class_uid,
        transfer_syntax_uid=parsed.transfer_syntax, json=parsed.json, meta_json=meta_json,
        bulk={k: [v.offset, v.length] for k, v in parsed.bulk.items()},
        pixel=parsed.pixel.to_dict() if parsed.pixel else None,
        sha256=parsed.sha256, size=size, storage_key=key,
        quarantine_reason=deid.reason if deid is not None and deid.quarantine else None,
        description=deid.original_study_description if deid is not None else None)


async def read_journal(store: BlobStore, key: str) -> list[tuple[str, str]]:
    """The (SOP Instance UID, storage key) entries of a batch journal (see Ingest._write_intent);
    none when it is cut short or malformed."""
    data = b"".join([chunk async for chunk in store.open_range(key)])
    try:
        return [(str(sop), str(k)) for sop, k in json.loads(data)]
    except (ValueError, TypeError):
        return []


class Ingest:
    """The pipeline: :meth:`receive` (stream to a staged blob), :meth:`finish` (parse and
    validate, in an executor), :meth:`commit` (make a batch durable, then index it).
    :meth:`store_instance` does all three for one instance."""

    def __init__(self, store: BlobStore, writer: IndexWriter, bulk_data_threshold: int = 1024,
                 pool_factory: Callable[[], Executor] | None = None, max_instance_size: int = 0,
                 deid: DeidConfig | None = None) -> None:
        self.store = store
        self.deid = deid  # de-identify every instance before it is stored (archive.deid)
        self.max_size = max_instance_size  # bytes as sent; 0: no limit
        self.writer = writer
        self.threshold = bulk_data_threshold
        # Parsing is pure-Python CPU work: in a process pool it runs beside the event loop
        # instead of taking turns with it for the GIL, and a parser crash on hostile input
        # kills a worker, not the server. None: the loop's default thread pool.
        self._pool_factory = pool_factory
        self._pool: Executor | None = pool_factory() if pool_factory else None
        self._queue: list[tuple[list[Prepared], asyncio.Future[None]]] = []
        self._committing = False
        self._parse_queue: list[_ParseJob] = []
        self._parse_calls = 0

    async def start(self) -> int:
        """Start the parse workers (so the first upload does not wait for them) and recover
        from an interrupted run; returns the number of blobs :meth:`recover` removed."""
        if self._pool is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, worker_ready)
        return await self.recover()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    async def _parse(self, path: str, digest: tuple[int, str] | None) -> tuple[ParsedInstance, bytes]:
        """Parse in the worker processes, batched: each call to a process costs the server
        pickling, two helper threads waking and a future (about a third of its CPU per tiny
        instance). Up to one call more than there are processes is in flight; the files that
        arrive meanwhile wait and go together in the next call. Alone, a file is sent at once."""
        if self._pool_factory is None:
            return await self._in_pool(parse_and_encode, path, self.threshold, digest)
        future: asyncio.Future[tuple[ParsedInstance, bytes]] = asyncio.get_running_loop().create_future()
        self._parse_queue.append((path, digest, future))
        self._dispatch_parses()
        return await future

    def _dispatch_parses(self) -> None:
        # One call more than processes: a process finishing a batch finds the next one queued.
        calls = getattr(self._pool, "_max_workers", 1) + 1
        self._parse_queue = [job for job in self._parse_queue if not job[2].done()]  # gone callers
        while self._parse_queue and self._parse_calls < calls:
            batch = self._parse_queue[:_PARSE_BATCH]
            del self._parse_queue[:_PARSE_BATCH]
            self._parse_calls += 1
            task = asyncio.get_running_loop().create_task(self._parse_batch(batch))
            # Bookkeeping in a callback: it runs even for a task cancelled before it started.
            task.add_done_callback(functools.partial(self._parse_batch_done, batch))

    def _parse_batch_done(self, batch: list[_ParseJob], _task: asyncio.Task[None]) -> None:
        self._parse_calls -= 1
        for _, _, future in batch:  # cancelled midway (shutdown): nobody waits for ever
            if not future.done():
                future.cancel()
        self._dispatch_parses()

    async def _parse_batch(self, batch: list[_ParseJob]) -> None:
        jobs = [(path, digest) for path, digest, _ in batch]
        pool = self._pool
        try:
            outcomes: list[Any] = await asyncio.get_running_loop().run_in_executor(
                pool, parse_many, jobs, self.threshold)
        except BrokenProcessPool:
            # A file of the batch may kill the parser: a new pool, and each file alone (with
            # its own one retry), so that only a file that does is refused.
            self._restart_pool(pool)
            outcomes = []
            for path, digest in jobs:
                try:
                    outcomes.append(await self._in_pool(parse_and_encode, path, self.threshold, digest))
                except Exception as exc:
                    outcomes.append(exc)
        except Exception as exc:  # the call itself failed (e.g. a result that would not pickle)
            outcomes = [exc] * len(batch)
        for (_, _, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the caller went away
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _restart_pool(self, pool: Executor | None) -> None:
        log.error("parse worker died; restarting the pool")
        if self._pool is pool and self._pool_factory is not None:
            assert pool is not None
            pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._pool_factory()

    async def _in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        pool = self._pool
        try:
            return await loop.run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            # A worker died (killed, out of memory, a crash in a codec): start a new pool and
            # give this instance one more try; if it kills that one too, it is refused.
            self._restart_pool(pool)
            try:
                return await loop.run_in_executor(self._pool, fn, *args)
            except BrokenProcessPool:
                raise InvalidInstance("the parser could not process this file") from None

    @metrics.counts_refusals
    async def receive(self, chunks: AsyncIterable[bytes]) -> Staged | IngestResult:
        """Stream one instance's bytes into storage (hashing its data set on the way)."""
        digest = DatasetDigest()
        try:
            blob = await self.store.create()
        except StorageFullError as exc:
            return IngestResult(OUT_OF_RESOURCES, str(exc))
        ok = False
        try:
            async for chunk in chunks:
                if self.max_size and blob.size + len(chunk) > self.max_size:
                    return IngestResult(OUT_OF_RESOURCES, f"instance larger than the server's maximum "
                                                          f"of {self.max_size} bytes")
                await blob.write(chunk, digest.update)
            if blob.size == 0:  # refused here: nothing to parse (and no file to open)
                return IngestResult(CANNOT_UNDERSTAND, "empty part: no DICOM data")
            ok = True
            return Staged(blob, digest)
        except StorageFullError as exc:
            return IngestResult(OUT_OF_RESOURCES, str(exc))
        except StorageError as exc:
            log.error("storage error while receiving: %s", exc)
            return IngestResult(PROCESSING_FAILURE, "storage error")
        finally:
            if not ok:
                await blob.abort()

    @metrics.counts_refusals
    async def finish(self, staged: Staged, expected: Expected | None = None) -> Prepared | IngestResult:
        """Parse and validate a received instance; a failure discards its staged blob."""
        blob = staged.blob
        deid: DeidResult | None = None
        sent: Sent | None = None
        try:
            if self.deid is None:
                parsed, meta_json = await self._parse(str(blob.staged_path()), staged.digest.result())
            else:
                parsed, meta_json, deid, sent, out = await self._in_pool(
                    deidentify_and_parse, str(blob.staged_path()), self.threshold, self.deid)
                await blob.replace_with(Path(out))
        except InvalidInstance as exc:
            await blob.abort()
            return IngestResult(exc.status, str(exc))
        except StorageError as exc:
            await blob.abort()
            log.error("storage error while de-identifying: %s", exc)
            return IngestResult(PROCESSING_FAILURE, "storage error")
        except BaseException:
            await blob.abort()
            raise
        result = IngestResult(0, "", parsed.sop_class_uid, parsed.sop_instance_uid,
                              parsed.study_uid, parsed.series_uid)
        if sent is not None:
            result.sent_sop_uid, result.coerced = sent.sop_uid, True
        if parsed.meta_mismatch:
            log.warning("accepted sop=%s whose File Meta names another SOP Class/Instance UID "
                        "(the data set's are used)", parsed.sop_instance_uid)
        problem = expected.mismatch(sent or parsed) if expected is not None else None
        if problem is not None:
            await blob.abort()
            if sent is not None:  # answer with what the sender sent, not the pseudonyms
                result.sop_class_uid, result.sop_uid = sent.sop_class_uid, sent.sop_uid
                result.study_uid = result.series_uid = None
            return _failed(result, DOES_NOT_MATCH, problem)
        record = instance_record(parsed, meta_json, blob.size, storage_key(parsed), deid)
        return Prepared(blob, record, result)

    async def prepare(self, chunks: AsyncIterable[bytes],
                      expected: Expected | None = None) -> Prepared | IngestResult:
        staged = await self.receive(chunks)
        if isinstance(staged, IngestResult):
            return staged
        return await self.finish(staged, expected)

    async def discard(self, prepared: list[Prepared]) -> None:
        """Give up prepared instances (e.g. the client went away before the batch committed)."""
        for p in prepared:
            await p.blob.abort()

    async def commit(self, prepared: list[Prepared]) -> list[IngestResult]:
        """Make a batch durable in storage, index it in one transaction, and only then report
        it stored; blobs that end up unreferenced are deleted.

        Group commit: batches that arrive while another one is being committed (concurrent
        requests, parallel C-STORE associations) are committed together, sharing the fsyncs
        and the index transaction."""
        if not prepared:
            return []
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((prepared, future))
        if not self._committing:
            self._committing = True
            asyncio.get_running_loop().create_task(self._commit_queued())
        await asyncio.shield(future)
        metrics.committed((p.result, p.record.size) for p in prepared)
        return [p.result for p in prepared]

    async def _commit_queued(self) -> None:
        """Take groups off the queue; up to ``_GROUPS_IN_FLIGHT`` at once, so one group's fsyncs
        overlap the previous group's index transaction (the writer serializes those)."""
        running: set[asyncio.Task[None]] = set()
        try:
            while self._queue or running:
                while self._queue and len(running) < _GROUPS_IN_FLIGHT:
                    groups: list[tuple[list[Prepared], asyncio.Future[None]]] = []
                    size = 0
                    while self._queue and size < _GROUP_MAX:
                        groups.append(self._queue.pop(0))
                        size += len(groups[-1][0])
                    running.add(asyncio.create_task(self._commit_groups(groups)))
                _, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._committing = False

    async def _commit_groups(self, groups: list[tuple[list[Prepared], asyncio.Future[None]]]) -> None:
        try:
            await self._commit_group([p for ps, _ in groups for p in ps])
        except Exception as exc:  # the waiting callers get it; the queue goes on
            log.exception("group commit of %d instance(s) failed", sum(len(ps) for ps, _ in groups))
            for _, future in groups:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in groups:
            if not future.done():
                future.set_result(None)

    async def _commit_group(self, prepared: list[Prepared]) -> None:
        try:
            intent = await self._write_intent(prepared)
        except StorageError as exc:
            await self.discard(prepared)
            status = OUT_OF_RESOURCES if isinstance(exc, StorageFullError) else PROCESSING_FAILURE
            for p in prepared:
                _failed(p.result, status, str(exc) if status == OUT_OF_RESOURCES else "storage error")
            return
        errors = await self.store.commit_many([(p.blob, p.record.storage_key) for p in prepared])
        durable: list[Prepared] = []
        for p, err in zip(prepared, errors, strict=True):
            if err is None:
                durable.append(p)
                continue
            await self._drop(p.record.storage_key)
            status = OUT_OF_RESOURCES if isinstance(err, StorageFullError) else PROCESSING_FAILURE
            log.error("storage commit failed sop=%s: %s", p.result.sop_uid, err,
                      extra={"sop_uid": p.result.sop_uid, "study_uid": p.result.study_uid})
            _failed(p.result, status, str(err) if status == OUT_OF_RESOURCES else "storage error")
        if durable:
            await self._index(durable)
        await self._drop(intent)

    async def _write_intent(self, prepared: list[Prepared]) -> str:
        """Journal the keys about to be committed before they get their names: if the process
        dies before the index commit, :meth:`recover` deletes the blobs the index never got."""
        key = f"{JOURNAL}/{owner_name()}-{uuid.uuid4().hex}.json"  # see recover
        entries = [[p.record.sop_uid, p.record.storage_key] for p in prepared]
        blob = await self.store.create()
        try:
            await blob.write(json.dumps(entries).encode("ascii"))
        except BaseException:
            await blob.abort()
            raise
        # Not fsynced: after a process crash the page cache still has it; after a power loss a
        # missing intent only leaves an unindexed blob behind: never served, only wasted space
        # (`imaging-archive verify` reports them, `--repair` indexes them).
        error = (await self.store.commit_many([(blob, key)], durable=False))[0]
        if error is not None:
            raise error
        return key

    async def recover(self) -> int:
        """At start-up: delete blobs of batches that were committed to storage but never
        indexed (the process died in between). Returns how many were deleted. Journals of other
        server processes that still run are theirs, not leftovers."""
        removed = 0
        for key in await self.store.list(JOURNAL):
            if owner_alive(key.rsplit("/", 1)[-1]):
                continue  # a batch another server process is committing now (serve --workers)
            # A journal cut short by the crash reads as empty: its blobs were not linked yet.
            entries = await read_journal(self.store, key)
            indexed = await self.writer.stored_keys([sop for sop, _ in entries])
            for sop, blob_key in entries:
                if blob_key not in indexed and await self.store.exists(blob_key):
                    log.warning("removing unindexed blob of an interrupted batch sop=%s", sop)
                    await self.store.delete(blob_key)
                    removed += 1
            await self.store.delete(key)
        return removed

    async def _index(self, durable: list[Prepared]) -> None:
        try:
            outcomes = await self.writer.add([p.record for p in durable])
        except Exception as exc:
            log.exception("index transaction failed for %d instance(s)", len(durable))
            full = _index_full(exc)
            for p in durable:
                await self._drop(p.record.storage_key)
                _failed(p.result, OUT_OF_RESOURCES if full else PROCESSING_FAILURE,
                        "index storage full" if full else "index error")
            return
        for p, added in zip(durable, outcomes, strict=True):
            res = p.result
            res.outcome = added.outcome
            if added.outcome is Outcome.CONFLICT:
                _failed(res, DUPLICATE_SOP_INSTANCE,
                         "a different instance with this SOP Instance UID is stored already")
            if added.obsolete_key:
                await self._drop(added.obsolete_key)
            log.info("%s sop=%s study=%s series=%s bytes=%d", added.outcome.value, res.sop_uid,
                     res.study_uid, res.series_uid, p.record.size,
                     extra={"outcome": added.outcome.value, "sop_uid": res.sop_uid,
                            "study_uid": res.study_uid, "series_uid": res.series_uid,
                            "bytes": p.record.size})

    async def store_instance(self, chunks: AsyncIterable[bytes],
                    expected: Expected | None = None) -> IngestResult:
        """Ingest one instance completely (receive, finish, commit)."""
        prepared = await self.prepare(chunks, expected)
        if isinstance(prepared, IngestResult):
            return prepared
        return (await self.commit([prepared]))[0]

    async def _drop(self, key: str) -> None:
        try:
            await self.store.delete(key)
        except Exception:  # a stray blob is never served; it only wastes space
            log.warning("could not delete unreferenced blob %s", key)


def _index_full(exc: BaseException) -> bool:
    """The index database ran out of space (SQLite: SQLITE_FULL, "database or disk is full";
    PostgreSQL: SQLSTATE class 53, insufficient resources: disk_full 53100 and its kin)."""
    orig = getattr(exc, "orig", None) or exc
    state = sqlstate(exc)
    return (getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or "database or disk is full" in str(orig)
            or (state is not None and state in ("53100", "53200", "53400")))


def _failed(result: IngestResult, status: int, message: str) -> IngestResult:
    result.status = status
    result.message = message
    return result
