"""Filesystem backend: one file per blob under ``<root>/data``, staged under ``<root>/tmp``.

Durability (acknowledge only what is on disk): a staged file is written, fsynced, then hard-linked
to its final name (which fails rather than replace an existing blob) and the directory entry is
fsynced. A crash leaves at most a ``tmp/*.part`` file, which :meth:`FilesystemStore.start` removes.
All blocking calls run in the default executor so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, TypeVar

import aiofiles

from storage.base import StorageError, StorageFullError, check_key, owner_alive, read_exactly

log = logging.getLogger("storage.filesystem")
T = TypeVar("T")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(exc: OSError, what: str) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"{what}: out of space")
    return StorageError(f"{what}: {exc.strerror or exc}")


class _FileWriter:
    """A staged file in ``tmp/``; see :class:`storage.base.BlobWriter`."""

    def __init__(self, store: FilesystemStore, path: Path) -> None:
        self._store = store
        self._path = path
        self._fd: int | None = None  # opened by the first write: one executor hop less
        self._closed = False
        self.size = 0

    def _open(self) -> int:
        if self._fd is None:
            if self._closed:
                raise StorageError("staged blob is closed")
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        return self._fd

    def staged_path(self) -> Path:
        """The staged file; it exists once something was written (an empty blob has none)."""
        return self._path

    def _write_all(self, data: bytes, tap: Callable[[bytes], None] | None) -> None:
        self._open()
        assert self._fd is not None
        if tap is not None:
            tap(data)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    async def write(self, data: bytes, tap: Callable[[bytes], None] | None = None) -> None:
        if not data:
            return
        try:
            await self._store._run(self._write_all, data, tap)
        except OSError as exc:
            raise _storage_error(exc, "write failed") from exc
        self.size += len(data)

    def _replace_with(self, path: Path) -> int:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        os.replace(path, self._path)  # atomic: the staged name always holds a whole file
        self._fd = os.open(self._path, os.O_WRONLY)  # reopened: _link fsyncs the new file
        return os.fstat(self._fd).st_size

    async def replace_with(self, path: Path) -> None:
        if self._closed:
            raise StorageError("staged blob is closed")
        try:
            self.size = await self._store._run(self._replace_with, Path(path))
        except OSError as exc:
            raise _storage_error(exc, "replace failed") from exc

    def _link(self, key: str, durable: bool = True) -> list[Path]:
        """fsync the staged file and give it its final name; return directories to fsync."""
        self._open()
        assert self._fd is not None
        if durable:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        self._closed = True
        final = self._store.data_dir / key
        created = self._store._makedirs(final.parent)
        try:
            os.link(self._path, final)  # atomic, and never replaces an existing blob
        except FileNotFoundError:  # a concurrent delete removed the (then empty) folder
            self._store._known_dirs.discard(final.parent)
            created = self._store._makedirs(final.parent)
            os.link(self._path, final)
        os.unlink(self._path)
        return [final.parent, *created]

    async def commit(self, key: str) -> None:
        error = (await self._store.commit_many([(self, key)]))[0]
        if error is not None:
            raise error

    def _abort(self) -> None:
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass

    async def abort(self) -> None:
        await self._store._run(self._abort)


class FilesystemStore:
    """Blobs as files below ``root``."""

    def __init__(self, root: str | os.PathLike[str], io_threads: int = 8) -> None:
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.tmp_dir = self.root / "tmp"
        # Disk calls wait (fsync above all) without holding the GIL: a pool of their own keeps
        # them from queueing behind CPU work in the loop's default executor.
        self._pool = ThreadPoolExecutor(io_threads, thread_name_prefix="storage-io")
        self._io_threads = io_threads
        # The process id leads each staged name: several server processes may share the folder
        # (serve --workers), and each removes at start-up only what dead processes left.
        self._prefix = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._counter = itertools.count()
        self._known_dirs: set[Path] = set()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _makedirs(self, path: Path) -> list[Path]:
        """mkdir -p; return the parents whose entries changed (to fsync them)."""
        if path in self._known_dirs:
            return []
        created: list[Path] = []
        missing: list[Path] = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            created.append(d.parent)
        if len(self._known_dirs) > 10_000:  # a cache, not a catalogue
            self._known_dirs.clear()
        self._known_dirs.add(path)
        return created

    def _start(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        removed = 0
        for leftover in self.tmp_dir.iterdir():
            if owner_alive(leftover.name):
                continue  # another server process's upload in progress
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    async def start(self) -> None:
        removed = await self._run(self._start)
        if removed:
            log.warning("removed %d leftover staged file(s) of interrupted writes", removed)

    async def create(self) -> _FileWriter:
        # Unique without a getrandom(2) call per file: a random prefix per store, then a counter.
        return _FileWriter(self, self.tmp_dir / f"{self._prefix}{next(self._counter):x}.part")

    async def commit_many(self, items: list[tuple[_FileWriter, str]],
                          durable: bool = True) -> list[StorageError | None]:
        """Commit several staged blobs at once: their fsyncs run in parallel (the file system
        merges them into fewer journal commits) and each directory is fsynced once.
        ``durable=False`` skips the fsyncs (for records that may be lost in a power cut).

        The blobs are dealt out to at most one executor call per I/O thread, each committing
        its share in turn: a hand-off per file would cost more CPU than the file system calls
        (threads waking and contending for the GIL)."""
        for _, key in items:
            check_key(key)
        shares = [items[i::self._io_threads] for i in range(min(self._io_threads, len(items)))]
        done = await asyncio.gather(*(self._run(self._link_share, share, durable) for share in shares))
        by_writer = {id(w): outcome for share in done for w, outcome in share}
        errors: list[StorageError | None] = []
        dirs: set[Path] = set()
        for writer, key in items:
            outcome = by_writer[id(writer)]
            if isinstance(outcome, BaseException):
                await writer.abort()
                if isinstance(outcome, FileExistsError):
                    errors.append(StorageError(f"blob {key} exists already"))
                elif isinstance(outcome, OSError):
                    errors.append(_storage_error(outcome, f"commit of {key} failed"))
                else:
                    raise outcome
            else:
                dirs.update(outcome)
                errors.append(None)
        if not durable:
            return errors
        synced = await asyncio.gather(*(self._run(_fsync_dir, d) for d in dirs), return_exceptions=True)
        failure = next((e for e in synced if isinstance(e, OSError)), None)
        if failure is not None:  # the names may not survive a crash: fail them all
            err = _storage_error(failure, "directory sync failed")
            return [err for _ in items]
        return errors

    @staticmethod
    def _link_share(share: list[tuple[_FileWriter, str]], durable: bool
                    ) -> list[tuple[_FileWriter, list[Path] | BaseException]]:
        out: list[tuple[_FileWriter, list[Path] | BaseException]] = []
        for writer, key in share:
            try:
                out.append((writer, writer._link(key, durable)))
            except Exception as exc:  # reported per blob by commit_many
                out.append((writer, exc))
        return out

    def path(self, key: str) -> Path:
        return self.data_dir / check_key(key)

    async def open_range(self, key: str, start: int = 0, end: int | None = None,
                         chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        path = self.path(key)
        async with aiofiles.open(path, "rb", executor=self._pool) as f:
            if start:
                await f.seek(start)
            remaining = None if end is None else max(0, end - start)
            while remaining is None or remaining > 0:
                n = chunk_size if remaining is None else min(chunk_size, remaining)
                chunk = await f.read(n)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    async def open_local(self, key: str) -> BinaryIO | None:
        return await self._run(open, self.path(key), "rb")

    def _read_into(self, items: list[tuple[str, memoryview]]) -> None:
        for key, view in items:
            with open(self.path(key), "rb", buffering=0) as f:
                if read_exactly(f, view) < len(view):
                    raise OSError(f"blob {key} is shorter than expected")
                if f.read(1):
                    raise OSError(f"blob {key} is longer than expected")

    def _read_range(self, key: str, start: int, end: int) -> bytes:
        with open(self.path(key), "rb", buffering=0) as f:
            data = os.pread(f.fileno(), end - start, start)
        if len(data) != end - start:
            raise OSError(f"blob {key} is shorter than expected")
        return data

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        # open + pread + close in one executor call: one thread hop instead of aiofiles' three.
        return await self._run(self._read_range, key, start, end)

    async def read_into(self, items: list[tuple[str, memoryview]]) -> None:
        await self._run(self._read_into, items)

    def local_path(self, key: str) -> str | None:
        return str(self.path(key))

    def open_sync(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def _list(self, prefix: str) -> list[str]:
        folder = self.data_dir / check_key(prefix)
        if not folder.is_dir():
            return []
        return sorted(f"{prefix}/{p.name}" for p in folder.iterdir() if p.is_file())

    async def list(self, prefix: str) -> list[str]:
        return await self._run(self._list, prefix)

    async def size(self, key: str) -> int:
        return (await self._run(os.stat, self.path(key))).st_size

    async def exists(self, key: str) -> bool:
        return await self._run(self.path(key).exists)

    def _delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        # Remove empty parents up to data/, so deleted studies leave no folders behind.
        parent = path.parent
        while parent != self.data_dir:
            try:
                parent.rmdir()
            except OSError:
                break
            self._known_dirs.discard(parent)
            parent = parent.parent

    async def delete(self, key: str) -> None:
        await self._run(self._delete, key)
