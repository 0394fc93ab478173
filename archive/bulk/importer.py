"""``imaging-archive ingest PATH…``: bulk import of folders, zip files and DICOMDIRs from disk.

Every file goes through the server's own pipeline (:class:`archive.ingest.Ingest`, opened by
:func:`archive.bulk.resources.open_archive`): streamed into a staged blob, parsed and validated
(and de-identified when configured) in the parse workers, committed durably and indexed in group
commits, harmonized, given its release state. ``jobs`` files are read and parsed at once; the
prepared ones are committed in batches of up to ``_BATCH``, two batches under way at a time (one's
fsyncs beside the other's index transaction), while the next files are read.

Files that are not DICOM (no Part 10 ``DICM`` prefix, and a name that does not end in .dcm) are
skipped, not failed. Each file's outcome goes to the resume state (archive.bulk.state) once its
batch is committed. Ctrl-C (or SIGTERM) stops taking new files, lets those under way finish, and
writes the state and the report; a second Ctrl-C stops at once (the next run, or the server's
next start, removes what was left half-done).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import zipfile
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, BinaryIO

from archive import metrics
from archive.bulk.progress import Progress
from archive.bulk.report import Summary
from archive.bulk.resources import Archive
from archive.bulk.sources import Item, Opener
from archive.bulk.state import ResumeState
from archive.index.writer import Outcome
from archive.ingest import IngestResult, Prepared

log = logging.getLogger("archive.bulk")

_CHUNK = 1 << 20
_BATCH = 100  # instances per commit
_COMMITS_IN_FLIGHT = 2
_OUTCOMES = {Outcome.STORED: "stored", Outcome.REPLACED: "replaced", Outcome.IDENTICAL: "duplicate"}
# What reading a file or a zip member may raise (a zip member's data: bad CRC, broken deflate).
_READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def entry_for(item: Item, outcome: str, reason: str = "", status: int | None = None,
              result: IngestResult | None = None) -> dict[str, Any]:
    """The item's line in the resume state and the report."""
    entry: dict[str, Any] = {"key": item.key, "file": item.label, "outcome": outcome,
                             "status": f"0x{status:04X}" if status is not None else None,
                             "reason": reason, "bytes": item.size}
    if result is not None:
        entry.update(sop_uid=result.sop_uid, study_uid=result.study_uid, series_uid=result.series_uid)
    return entry


def _result_entry(item: Item, result: IngestResult) -> dict[str, Any]:
    if result.ok:
        outcome = _OUTCOMES.get(result.outcome, "stored") if result.outcome else "stored"
        return entry_for(item, outcome, "", 0, result)
    return entry_for(item, "failed", result.message, result.status, result)


class BulkIngest:
    def __init__(self, archive: Archive, state: ResumeState, summary: Summary, progress: Progress,
                 jobs: int = 8) -> None:
        self.ingest = archive.ingest
        self.state = state
        self.summary = summary
        self.progress = progress
        self.jobs = jobs
        self.stopping = asyncio.Event()
        self._opener = Opener()
        self._ready: asyncio.Queue[tuple[Item, Prepared] | None] = asyncio.Queue()
        # Files read but not yet committed: bounds the staged blobs waiting for the index.
        self._slots = asyncio.Semaphore(max(2 * _BATCH, 4 * jobs))

    async def run(self, items: list[Item]) -> None:
        """Ingest ``items`` (those an earlier run finished are only reported)."""
        metrics.INGEST_PATH.set("bulk")  # the tasks below inherit it
        self.summary.clock = self.progress.started = time.monotonic()  # rates of the ingest alone
        todo: list[Item] = []
        for item in items:
            done = self.state.done(item.key)
            if done is None:
                todo.append(item)
            else:
                self.summary.add(done, resumed=True)
                self.progress.advance(done["outcome"], item.size, resumed=True)
        shared = iter(todo)
        shower = asyncio.create_task(self.progress.run())
        committer = asyncio.create_task(self._commit_all())
        try:
            await asyncio.gather(*(self._work(shared) for _ in range(self.jobs)))
        finally:
            await self._ready.put(None)
            await committer
            shower.cancel()
            await self.state.flush()
            await asyncio.to_thread(self._opener.close_all)
        self.summary.interrupted = self.stopping.is_set()
        self.progress.show(final=True)

    def stop_on_signals(self) -> None:
        """First SIGINT/SIGTERM: finish the files under way, then stop; the second: stop now."""
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()

        def stop() -> None:
            if self.stopping.is_set():
                if main is not None:
                    main.cancel()
                return
            self.stopping.set()
            log.warning("stopping: finishing the files under way (again to stop at once)")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)

    async def _work(self, items: Iterator[Item]) -> None:
        for item in items:  # one iterator shared by the workers: each item is taken once
            if self.stopping.is_set():
                return
            await self._slots.acquire()
            out = await self._prepare(item)
            if isinstance(out, Prepared):
                await self._ready.put((item, out))
            else:
                await self._finish(item, out)
                self._slots.release()

    async def _prepare(self, item: Item) -> Prepared | dict[str, Any]:
        """Read, stage and parse one file; its entry when it ends here (skipped, failed)."""
        if item.note is not None:
            return entry_for(item, item.note[0], item.note[1])
        stream: BinaryIO | None = None
        try:
            head, stream = await asyncio.to_thread(self._open_head, item)
            if head[128:132] != b"DICM" and not item.expect_dicom:
                return entry_for(item, "skipped", "not a DICOM PS3.10 file (no 'DICM' prefix)"
                                 if head else "empty file")
            staged = await self.ingest.receive(self._chunks(head, stream))
        except _READ_ERRORS as exc:
            return entry_for(item, "failed", f"cannot read: {exc}")
        finally:
            if stream is not None:
                await asyncio.to_thread(self._opener.close, stream)
        if isinstance(staged, IngestResult):
            return _result_entry(item, staged)
        prepared = await self.ingest.finish(staged)
        return _result_entry(item, prepared) if isinstance(prepared, IngestResult) else prepared

    def _open_head(self, item: Item) -> tuple[bytes, BinaryIO | None]:
        """Open the item and read its first chunk (blocking); the stream is returned open only when
        there is more to read. Most files fit in one chunk: one thread hand-off reads them whole."""
        stream = self._opener.open(item)
        try:
            head = stream.read(_CHUNK)
        except BaseException:
            self._opener.close(stream)
            raise
        if len(head) < _CHUNK:  # a short read is the end (files, zip members)
            self._opener.close(stream)
            return head, None
        return head, stream

    @staticmethod
    async def _chunks(head: bytes, stream: BinaryIO | None) -> AsyncIterator[bytes]:
        yield head
        while stream is not None and (chunk := await asyncio.to_thread(stream.read, _CHUNK)):
            yield chunk

    async def _commit_all(self) -> None:
        """Commit what the workers prepared, in batches, two under way at a time."""
        running: set[asyncio.Task[None]] = set()
        finished = False
        while not finished:
            first = await self._ready.get()
            batch: list[tuple[Item, Prepared]] = []
            while first is not None:
                batch.append(first)
                if len(batch) >= _BATCH or self._ready.empty():
                    break
                first = self._ready.get_nowait()
            finished = first is None
            if batch:
                running.add(asyncio.create_task(self._commit(batch)))
            if len(running) >= _COMMITS_IN_FLIGHT or (finished and running):
                done, running = await asyncio.wait(
                    running, return_when=asyncio.ALL_COMPLETED if finished else asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()

    async def _commit(self, batch: list[tuple[Item, Prepared]]) -> None:
        try:
            results = await self.ingest.commit([p for _, p in batch])
            for (item, _), result in zip(batch, results, strict=True):
                await self._finish(item, _result_entry(item, result))
        finally:
            for _ in batch:
                self._slots.release()

    async def _finish(self, item: Item, entry: dict[str, Any]) -> None:
        self.summary.add(entry)
        self.progress.advance(entry["outcome"], item.size)
        await self.state.record(entry)
        fields = {"file": entry["file"], "outcome": entry["outcome"], "status": entry["status"],
                  "sop_uid": entry.get("sop_uid"), "study_uid": entry.get("study_uid")}
        if entry["outcome"] == "failed":
            log.warning("ingest failed file=%s status=%s sop=%s: %s", entry["file"], entry["status"],
                        entry.get("sop_uid"), entry["reason"], extra={**fields, "reason": entry["reason"]})
        else:
            log.debug("%s file=%s sop=%s", entry["outcome"], entry["file"], entry.get("sop_uid"),
                      extra=fields)
