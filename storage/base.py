"""The storage interface: stage a stream, commit it under a key, read ranges back, delete.

Writes are staged because the caller learns the key (from the DICOM UIDs) only after the bytes
have arrived: ``create()`` gives a :class:`BlobWriter`, the caller streams into it, inspects the
staged bytes, then ``commit(key)`` makes them durable under that key in one atomic step, or
``abort()`` throws them away.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, Protocol

_KEY_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class StorageError(Exception):
    """A backend could not complete an operation."""


class StorageFullError(StorageError):
    """Out of space (or quota): the write was not made."""


class InvalidKeyError(StorageError, ValueError):
    """A key that is not a plain relative path of safe characters."""


def check_key(key: str) -> str:
    """Reject keys that could escape the store: absolute, ``..``, odd characters."""
    if len(key) > 1024 or not _KEY_RE.fullmatch(key) or any(p in (".", "..") for p in key.split("/")):
        raise InvalidKeyError(f"invalid storage key {key!r}")
    return key


class BlobWriter(Protocol):
    """A staged blob being written; invisible to readers until :meth:`commit`."""

    size: int

    async def write(self, data: bytes, tap: Callable[[bytes], None] | None = None) -> None:
        """Append ``data``; ``tap`` (e.g. a digest) sees the same bytes, off the event loop."""
        ...

    def staged_path(self) -> Path:
        """A local file holding the staged bytes, readable until commit/abort."""
        ...

    async def replace_with(self, path: Path) -> None:
        """Make the local file ``path`` (written beside :meth:`staged_path`, on the same file
        system) the staged bytes instead of those written so far; ``path`` is consumed."""
        ...

    async def commit(self, key: str) -> None:
        """Make the staged bytes durable under ``key`` (replacing nothing: keys are unique)."""
        ...

    async def abort(self) -> None: ...


class BlobStore(Protocol):
    """Where instance files live. Keys are relative paths chosen by the archive."""

    async def start(self) -> None:
        """Prepare the store and clean leftovers of interrupted writes."""
        ...

    async def create(self) -> BlobWriter: ...

    def close(self) -> None:
        """Release the store's resources (threads, connections)."""
        ...

    async def commit_many(self, items: list[tuple[BlobWriter, str]],
                          durable: bool = True) -> list[StorageError | None]:
        """Commit staged blobs under their keys; per item None or the error (that item is
        aborted). Batching lets a backend overlap the durability work of many blobs.
        ``durable=False``: visible under the key, but not forced to disk."""
        ...

    def open_range(self, key: str, start: int = 0, end: int | None = None,
                   chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Yield the bytes ``[start, end)`` of a blob in chunks."""
        ...

    async def open_local(self, key: str) -> BinaryIO | None:
        """An open local file of the blob (for sendfile), or None if the backend has none."""
        ...

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        """The bytes ``[start, end)`` of a blob in one call (a frame, a bulk value): for small
        ranges, where one round trip beats a chunked stream."""
        ...

    async def read_into(self, items: list[tuple[str, memoryview]]) -> None:
        """Read whole blobs into the given buffers (each exactly a blob's size), for small blobs
        read together into memory the caller owns and reuses."""
        ...

    def local_path(self, key: str) -> str | None:
        """The blob's path on this machine's file system, or None for a remote backend (for
        work handed to another process, which opens the file itself)."""
        ...

    def open_sync(self, key: str) -> BinaryIO:
        """A seekable binary file object, for use in executor threads only."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Keys of the blobs directly in folder ``prefix`` (not recursive)."""
        ...

    async def size(self, key: str) -> int: ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None: ...


def read_exactly(src: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``src`` by ``readinto`` until it is full or ``src`` ends; bytes read
    (fewer than ``len(view)``: the source was short)."""
    pos = 0
    while pos < len(view):
        n = src.readinto(view[pos:])
        if not n:
            break
        pos += n
    return pos


# This host, in the names of files other hosts may see (journals in a shared bucket): a process
# id means something only on the host that has it.
HOST_TAG = "h" + hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owner_name() -> str:
    """The owner part of a name in shared storage: "PID-hHOSTHASH" (see :func:`owner_alive`)."""
    return f"{os.getpid()}-{HOST_TAG}"


def owner_alive(name: str) -> bool:
    """Whether the file ``name`` ("PID-…", or "PID-hHOSTHASH-…" from :func:`owner_name`) belongs
    to another process that still runs. A name from another host counts as alive: this host cannot
    tell, and that host recovers its own leftovers when it restarts. Names without a process id,
    and this process's own (left by an earlier process that had its id), are not."""
    pid, sep, rest = name.partition("-")
    if not sep or not pid.isdigit():
        return False
    host = rest.split("-", 1)[0].split(".", 1)[0]
    if re.fullmatch(r"h[0-9a-f]{8}", host) and host != HOST_TAG:
        return True
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
