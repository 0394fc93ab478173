"""Filesystem backend: one file per blob under ``<root>/data``, staged under ``<root>/tmp``.

Durability (acknowledge only what is on disk): a staged file is written, fsynced, then hard-linked
to its final name (which fails rather than replace an existing blob) and the directory entry is
fsynced. A crash leaves at most a ``tmp/*.part`` file, which :meth:`FilesystemStore.start` removes.
All blocking calls run in the default executor so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import aiofiles

from storage.base import StorageError, StorageFullError, check_key

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

    def __init__(self, store: FilesystemStore, path: Path, fd: int) -> None:
        self._store = store
        self._path = path
        self._fd: int | None = fd
        self.size = 0

    def staged_path(self) -> Path:
        return self._path

    def _write_all(self, data: bytes, tap: Callable[[bytes], None] | None) -> None:
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

    def _commit(self, key: str) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        final = self._store.data_dir / key
        created = self._store._makedirs(final.parent)
        os.link(self._path, final)  # atomic, and never replaces an existing blob
        os.unlink(self._path)
        _fsync_dir(final.parent)
        for parent in created:
            _fsync_dir(parent)

    async def commit(self, key: str) -> None:
        check_key(key)
        try:
            await self._store._run(self._commit, key)
        except FileExistsError as exc:
            await self.abort()
            raise StorageError(f"blob {key} exists already") from exc
        except OSError as exc:
            await self.abort()
            raise _storage_error(exc, f"commit of {key} failed") from exc

    def _abort(self) -> None:
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

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.tmp_dir = self.root / "tmp"

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _makedirs(self, path: Path) -> list[Path]:
        """mkdir -p; return the parents whose entries changed (to fsync them)."""
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
        return created

    def _start(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        removed = 0
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    async def start(self) -> None:
        removed = await self._run(self._start)
        if removed:
            log.warning("removed %d leftover staged file(s) of interrupted writes", removed)

    def _create(self) -> _FileWriter:
        path = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        return _FileWriter(self, path, fd)

    async def create(self) -> _FileWriter:
        try:
            return await self._run(self._create)
        except OSError as exc:
            raise _storage_error(exc, "cannot create staged file") from exc

    def path(self, key: str) -> Path:
        return self.data_dir / check_key(key)

    async def open_range(self, key: str, start: int = 0, end: int | None = None,
                         chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        path = self.path(key)
        async with aiofiles.open(path, "rb") as f:
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

    def open_sync(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

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
            parent = parent.parent

    async def delete(self, key: str) -> None:
        await self._run(self._delete, key)
