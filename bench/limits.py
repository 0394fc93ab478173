"""Machine limits measured in the same run as the server figures.

* write+fsync: files the size of one CT instance written to a temporary name, fsync'd and renamed
  into place, in a folder on the same file system as the server's data dir; 1 and N writers.
* disk read: the files of a write probe read back after ``posix_fadvise(DONTNEED)`` (``read_probe``).
* loopback GET: one large file served by ``fileserver.py`` (aiohttp ``web.FileResponse``) and
  downloaded with ``httpclient.download``, the same code that times the WADO-RS retrieve.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpclient
from procs import ManagedProcess

BENCH_DIR = Path(__file__).resolve().parent


@dataclass
class FsyncResult:
    writers: int
    files: int
    file_bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.files * self.file_bytes / 1e6 / self.seconds

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds


def _write_durably(folder: Path, name: str, data: bytes) -> None:
    tmp = folder / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, folder / name)


def _writer(folder: Path, data: bytes, prefix: str, max_files: int, deadline: float) -> int:
    """Write durably until ``deadline`` (at least one file, at most ``max_files``); return the count."""
    written = 0
    for n in range(max_files):
        _write_durably(folder, f"{prefix}-{n:06d}.dcm", data)
        written += 1
        if time.perf_counter() >= deadline:
            break
    return written


def fsync_probe(folder: Path, file_bytes: int, writers: int, seconds: float, max_files: int,
                keep: bool = False) -> FsyncResult:
    """Durable writes of ``file_bytes`` each from ``writers`` threads for about ``seconds``.
    ``keep``: leave the files in ``folder`` (for ``read_probe``); the caller removes them."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    data = os.urandom(file_bytes)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=writers) as pool:
        futures = [pool.submit(_writer, folder, data, f"w{w}", max_files // writers, start + seconds)
                   for w in range(writers)]
        files = sum(f.result() for f in futures)
    elapsed = time.perf_counter() - start
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return FsyncResult(writers, files, file_bytes, elapsed)


@dataclass
class ReadResult:
    readers: int
    files: int
    bytes: int
    seconds: float
    dropped: bool  # the page cache was told to drop the files first (posix_fadvise DONTNEED)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


def _drop_cached(path: Path) -> bool:
    """Ask the kernel to drop ``path``'s clean pages from the page cache (they are fsynced: clean)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def _read_whole(paths: list[Path]) -> int:
    total = 0
    buf = bytearray(1 << 20)
    for path in paths:
        with path.open("rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                total += n
    return total


def read_probe(folder: Path, readers: int) -> ReadResult:
    """Read back every file in ``folder`` (those ``fsync_probe(keep=True)`` wrote) after dropping them
    from the page cache, with ``readers`` threads: the disk's read rate for the same bytes."""
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    dropped = all([_drop_cached(p) for p in paths]) if paths else False
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=readers) as pool:
        total = sum(pool.map(_read_whole, [paths[i::readers] for i in range(readers)]))
    return ReadResult(readers, len(paths), total, time.perf_counter() - start, dropped)


@dataclass
class LoopbackResult:
    file_bytes: int
    runs: list[httpclient.Download]

    @property
    def median_mb_per_s(self) -> float:
        return statistics.median(r.mb_per_s for r in self.runs)


def _make_file(path: Path, size: int) -> None:
    block = os.urandom(8 << 20)
    with path.open("wb") as fh:
        for _ in range(size // len(block)):
            fh.write(block)
        fh.write(block[: size % len(block)])


async def _download_runs(url: str, runs: int) -> list[httpclient.Download]:
    async with httpclient.session(1) as http:
        await httpclient.download(http, url, "application/octet-stream")  # warm-up, untimed
        return [await httpclient.download(http, url, "application/octet-stream") for _ in range(runs)]


def loopback_get(folder: Path, size: int, port: int, runs: int) -> LoopbackResult:
    """Serve a ``size``-byte file on 127.0.0.1:``port`` and download it ``runs`` times (+1 warm-up)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plain-file.bin"
    _make_file(path, size)
    server = ManagedProcess("plain file server", [sys.executable, str(BENCH_DIR / "fileserver.py"),
                                                  str(path), str(port)],
                            BENCH_DIR, folder / "fileserver.log", f"http://127.0.0.1:{port}/healthz")
    server.start(timeout=30)
    try:
        results = asyncio.run(_download_runs(f"http://127.0.0.1:{port}/file", runs))
    finally:
        server.stop()
        path.unlink(missing_ok=True)
    for r in results:
        if r.status != 200 or r.bytes != size:
            raise RuntimeError(f"plain file GET returned {r.status} with {r.bytes} of {size} bytes")
    return LoopbackResult(size, results)
