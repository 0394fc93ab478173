"""S3-compatible backend: one object per blob, ``{prefix}{key}`` in a bucket.

Written against the plain S3 REST API (PutObject, the multipart upload calls, GetObject with
``Range``, HeadObject, DeleteObject, ListObjectsV2), through boto3 in executor threads, so that
AWS S3, MinIO, Ceph RGW and Google Cloud Storage's XML API all serve it. With an ``endpoint_url``
requests use path-style addressing (``{endpoint}/{bucket}/{key}``), which every one of them takes.

Writes: the bytes of one instance are staged in a local file (ingest parses a local file), by a
:class:`~storage.filesystem.FilesystemStore` used only for its ``tmp/`` folder; ``commit`` uploads
that file under the final key, in one PUT when small, else as a multipart upload of
:data:`PART_SIZE` parts, :data:`PARALLEL_PARTS` at a time, and returns only once S3 answered that
the object is complete (S3 is strongly consistent: a completed object is readable at once). So the
index never commits a row whose object is missing, and a reader never sees half an object.

Reads are ranged GETs (RFC 9110 §14 ``Range: bytes=first-last``): frames and bulk data read only
their bytes; whole-object streams are read chunk by chunk, the next chunk fetched while the
current one is sent, never the whole object in memory.

A process that dies in the middle of a multipart upload leaves an incomplete upload (its parts
are billed until aborted). Each upload is recorded beside its staged file in a local file named
with the process id (like staged files, see :func:`storage.base.owner_alive`); :meth:`S3Store.start`
aborts the uploads of records whose process is gone. A bucket lifecycle rule
(AbortIncompleteMultipartUpload) is the backstop for a host that never comes back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import io
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import HTTPError as Urllib3Error

from storage.base import StorageError, StorageFullError, check_key, owner_alive, read_exactly
from storage.filesystem import FilesystemStore, _FileWriter

log = logging.getLogger("storage.s3")
T = TypeVar("T")

# Objects from this size on go up as multipart uploads; smaller ones in one PUT.
MULTIPART_THRESHOLD = 16 << 20
# Part size (S3: at least 5 MiB, at most 10,000 parts: larger objects get larger parts). Parts
# are streamed from the staged file (see _FileSlice), never held in memory.
PART_SIZE = 8 << 20
MAX_PARTS = 10_000
PARALLEL_PARTS = 4
# Concurrent S3 requests besides the part uploads (a group commit, parallel reads).
IO_THREADS = 16
# Read-ahead of open_sync's file objects: pydicom's many small reads become one GET per MiB.
READ_AHEAD = 1 << 20

# Error codes that say the service is out of room for this bucket (MinIO, Ceph RGW, others).
_FULL_CODES = frozenset({"QuotaExceeded", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded",
                         "StorageFull", "InsufficientStorage", "EntityTooLarge"})
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_UPLOAD_RECORD = ".upload"  # suffix of the local record of a multipart upload in progress


class BlobNotFoundError(StorageError, FileNotFoundError):
    """No object under the key (FileNotFoundError, as the filesystem backend raises)."""


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _s3_error(exc: BaseException, what: str) -> StorageError:
    """A StorageError that says what failed, for a botocore, urllib3 or local file error."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, ClientError):
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _MISSING_CODES:
            return BlobNotFoundError(f"{what}: no such object")
        if code in _FULL_CODES or status == 507:
            return StorageFullError(f"{what}: the object store is full ({code})")
        message = exc.response.get("Error", {}).get("Message", "")
        return StorageError(f"{what}: S3 error {code or status} {message}".rstrip())
    if isinstance(exc, OSError) and exc.strerror:
        return StorageError(f"{what}: {exc.strerror}")
    return StorageError(f"{what}: {exc}")  # unreachable endpoint, timeouts, cut streams


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """Turns S3 and network failures into StorageError (callers answer 503 / 0xA700 / 0x0110)."""
    try:
        yield
    except (ClientError, BotoCoreError, Urllib3Error, OSError) as exc:
        raise _s3_error(exc, what) from exc


def _close_after(body: Any, read: asyncio.Future[bytes]) -> None:
    if not read.cancelled():
        read.exception()  # retrieved: a read that failed after the caller left is no news
    body.close()


class _S3Writer:
    """A staged blob: its bytes in a local file until :meth:`commit` uploads them. See
    :class:`storage.base.BlobWriter`."""

    def __init__(self, store: S3Store, staged: _FileWriter) -> None:
        self._store = store
        self._staged = staged

    @property
    def size(self) -> int:
        return self._staged.size

    async def write(self, data: bytes, tap: Callable[[bytes], None] | None = None) -> None:
        await self._staged.write(data, tap)

    def staged_path(self) -> Path:
        return self._staged.staged_path()

    async def replace_with(self, path: Path) -> None:
        await self._staged.replace_with(path)

    async def commit(self, key: str) -> None:
        error = (await self._store.commit_many([(self, key)]))[0]
        if error is not None:
            raise error

    async def abort(self) -> None:
        await self._staged.abort()


class _Reader(io.RawIOBase):
    """A read-only, seekable file of ``size`` bytes whose reads :meth:`_read_at` makes."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        self._read_at(self._pos, memoryview(buffer).cast("B")[:n])
        self._pos += n
        return n

    def _read_at(self, pos: int, view: memoryview) -> None:
        """Fill ``view`` with the bytes from ``pos`` (all of them, or raise)."""
        raise NotImplementedError


class _FileSlice(_Reader):
    """``length`` bytes of a local file from ``offset``, as a file of their own: the body of one
    part, which botocore reads in blocks to sign and to send (never whole in memory)."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        super().__init__(length)
        self._file = open(path, "rb", buffering=0)  # closed with the slice
        self._offset = offset

    def _read_at(self, pos: int, view: memoryview) -> None:
        if os.preadv(self._file.fileno(), [view], self._offset + pos) != len(view):
            raise StorageError("staged file is shorter than its size")

    def close(self) -> None:
        self._file.close()
        super().close()


class _RangedFile(_Reader):
    """One object as a file: each read is a ranged GET (wrapped in a BufferedReader by
    :meth:`S3Store.open_sync` for read-ahead). Blocking: executor threads only."""

    def __init__(self, store: S3Store, name: str, size: int) -> None:
        super().__init__(size)
        self._store = store
        self._name = name

    def _read_at(self, pos: int, view: memoryview) -> None:
        self._store._get_into(self._name, pos, view)


class S3Store:
    """Blobs as objects of ``bucket`` under ``prefix``; staged uploads in ``staging_dir/tmp``.

    Credentials: ``access_key_id``/``secret_access_key`` when given, else boto3's chain (the
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN environment variables, the
    shared credentials file, an instance or container role)."""

    def __init__(self, bucket: str, staging_dir: str | os.PathLike[str], prefix: str = "",
                 endpoint_url: str | None = None, region: str | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if self.prefix:
            check_key(self.prefix[:-1])
        self._staging = FilesystemStore(staging_dir, io_threads=4)
        self.tmp_dir = self._staging.tmp_dir  # staged files (one instance each) and upload records
        self._client_args: dict[str, Any] = {
            "endpoint_url": endpoint_url or None, "region_name": region or None,
            "aws_access_key_id": access_key_id or None, "aws_secret_access_key": secret_access_key or None,
            "config": BotoConfig(
                s3={"addressing_style": "path"} if endpoint_url else {},
                max_pool_connections=IO_THREADS + PARALLEL_PARTS + 8,
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=10, read_timeout=60,
                # Checksums only where the API requires them: the newer default (CRC32 trailers
                # on every upload) is refused by several S3-compatible services.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required")}
        self._client_obj: Any = None
        self._client_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="s3-io")
        # Parts have a pool of their own: an upload waits on its parts from an s3-io thread.
        self._parts = ThreadPoolExecutor(PARALLEL_PARTS, thread_name_prefix="s3-part")

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The boto3 client (thread-safe once made; blocking: executor threads only), made on
        first use, which is off the event loop."""
        if self._client_obj is None:
            with self._client_lock:
                if self._client_obj is None:
                    self._client_obj = boto3.session.Session().client("s3", **self._client_args)
        return self._client_obj

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._parts.shutdown(wait=True)
        self._staging.close()
        if self._client_obj is not None:
            self._client_obj.close()

    # -- start-up ------------------------------------------------------------------------------

    def _check_bucket(self) -> None:
        where = f"bucket {self.bucket!r} at {self.client.meta.endpoint_url}"
        with _errors(f"{where} is not usable"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _code(exc) in ("404", "NoSuchBucket"):
                    raise StorageError(f"{where} does not exist (the archive does not create it)") from exc
                raise

    def _abort_dead_uploads(self) -> int:
        """Abort the multipart uploads whose local record belongs to a process that is gone."""
        aborted = 0
        tmp = self._staging.tmp_dir
        tmp.mkdir(parents=True, exist_ok=True)
        for record in tmp.glob(f"*{_UPLOAD_RECORD}"):
            if owner_alive(record.name):
                continue
            try:
                upload = json.loads(record.read_text(encoding="utf-8"))
                key, upload_id = str(upload["key"]), str(upload["upload_id"])
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable upload record %s removed", record.name)
            else:
                with _errors("abort of an interrupted upload"):
                    try:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                        aborted += 1
                    except ClientError as exc:
                        if _code(exc) not in ("NoSuchUpload", "404"):  # completed or aborted already
                            raise
            record.unlink(missing_ok=True)
        return aborted

    async def start(self) -> None:
        """Check that the bucket answers, abort the uploads dead processes left, and clean the
        staging folder (leftovers of dead processes only: see FilesystemStore.start)."""
        await self._run(self._check_bucket)
        aborted = await self._run(self._abort_dead_uploads)
        if aborted:
            log.warning("aborted %d incomplete multipart upload(s) of interrupted writes", aborted)
        await self._staging.start()

    # -- writes --------------------------------------------------------------------------------

    async def create(self) -> _S3Writer:
        return _S3Writer(self, await self._staging.create())

    def _exists(self, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                return False
            raise
        return True

    def _upload(self, path: Path, size: int, key: str) -> None:
        """The staged file as the object ``key``, complete when this returns; never replaces an
        existing object (keys are unique: one there means a bug, as the filesystem's link says)."""
        name = self._name(key)
        with _errors(f"commit of {key} failed"):
            if self._exists(name):
                raise StorageError(f"blob {key} exists already")
            if size < MULTIPART_THRESHOLD:
                with open(path, "rb") if size else contextlib.nullcontext(io.BytesIO()) as body:
                    self.client.put_object(Bucket=self.bucket, Key=name, Body=body)
            else:
                self._multipart(path, size, name)

    def _multipart(self, path: Path, size: int, name: str) -> None:
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=name)["UploadId"]
        record = path.with_name(path.name + _UPLOAD_RECORD)
        try:
            # Written before any part is sent (not fsynced: see the journal in archive.ingest).
            record.write_text(json.dumps({"key": name, "upload_id": upload_id}), encoding="utf-8")
            part = max(PART_SIZE, -(-size // MAX_PARTS))
            futures = [self._parts.submit(self._upload_part, path, name, upload_id, n + 1, offset,
                                          min(part, size - offset))
                       for n, offset in enumerate(range(0, size, part))]
            try:
                etags = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                concurrent.futures.wait(futures)
                raise
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n + 1, "ETag": e} for n, e in enumerate(etags)]})
            stored = self.client.head_object(Bucket=self.bucket, Key=name)["ContentLength"]
            if stored != size:  # never index an object that is not the staged bytes
                self.client.delete_object(Bucket=self.bucket, Key=name)
                raise StorageError(f"object {name} has {stored} bytes after upload, not {size}")
        except BaseException:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
            raise
        finally:
            record.unlink(missing_ok=True)

    def _upload_part(self, path: Path, name: str, upload_id: str, number: int, offset: int,
                     length: int) -> str:
        with _FileSlice(path, offset, length) as body:
            return str(self.client.upload_part(Bucket=self.bucket, Key=name, UploadId=upload_id,
                                                PartNumber=number, Body=body, ContentLength=length)["ETag"])

    async def _commit_one(self, writer: _S3Writer, key: str) -> StorageError | None:
        try:
            await self._run(self._upload, writer.staged_path(), writer.size, key)
            return None
        except StorageError as exc:
            return exc
        finally:
            await writer.abort()  # the local copy is not needed any more, uploaded or not

    async def commit_many(self, items: list[tuple[_S3Writer, str]],
                          durable: bool = True) -> list[StorageError | None]:
        """Upload staged blobs, :data:`IO_THREADS` at a time; per item None or the error.
        ``durable`` makes no difference: S3 acknowledges only what it has stored durably."""
        for _, key in items:
            check_key(key)
        return list(await asyncio.gather(*(self._commit_one(w, k) for w, k in items)))

    # -- reads ---------------------------------------------------------------------------------

    def _get(self, name: str, start: int | None = None, end: int | None = None) -> Any:
        """GetObject of ``[start, end)`` (the whole object when ``start`` is None), or None when
        ``start`` is at or past the end (S3 answers 416 there; the filesystem reads nothing)."""
        ranged = {} if start is None else {
            "Range": f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"}
        with _errors(f"read of {name}"):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=name, **ranged)
            except ClientError as exc:
                if _code(exc) == "InvalidRange":
                    return None
                raise

    @staticmethod
    def _fill(name: str, body: Any, view: memoryview) -> None:
        with _errors(f"read of {name}"), contextlib.closing(body):
            if read_exactly(body, view) < len(view):
                raise StorageError(f"object {name} is shorter than expected")

    def _get_into(self, name: str, start: int, view: memoryview) -> None:
        """Exactly ``len(view)`` bytes from ``start`` into ``view``."""
        found = self._get(name, start, start + len(view))
        if found is None:
            raise StorageError(f"object {name} is shorter than expected")
        self._fill(name, found["Body"], view)

    @staticmethod
    def _read_chunk(body: Any, size: int, name: str) -> bytes:
        with _errors(f"read of {name}"):
            return bytes(body.read(size))

    async def open_range(self, key: str, start: int = 0, end: int | None = None,
                         chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        name = self._name(key)
        if end is not None and end <= start:
            return
        whole = start == 0 and end is None  # a plain GET: no Range header to misread
        found = await self._run(self._get, name, None if whole else start, end)
        if found is None:
            return
        body = found["Body"]
        # The next chunk is fetched while the caller sends this one: the network transfer from
        # S3 overlaps the client's, with two chunks in memory.
        pending = asyncio.ensure_future(self._run(self._read_chunk, body, chunk_size, name))
        try:
            while chunk := await pending:
                pending = asyncio.ensure_future(self._run(self._read_chunk, body, chunk_size, name))
                yield chunk
        finally:
            # Closed once the read in flight (if any) is over: never under a reading thread.
            pending.add_done_callback(functools.partial(_close_after, body))

    async def open_local(self, key: str) -> BinaryIO | None:
        return None  # no local file: callers stream with open_range

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        buf = bytearray(end - start)
        await self._run(self._get_into, self._name(key), start, memoryview(buf))
        return bytes(buf)

    def _read_whole_into(self, name: str, view: memoryview) -> None:
        found = self._get(name)
        if found["ContentLength"] != len(view):
            found["Body"].close()
            raise StorageError(f"object {name} has {found['ContentLength']} bytes, not {len(view)}")
        self._fill(name, found["Body"], view)

    async def read_into(self, items: list[tuple[str, memoryview]]) -> None:
        # Small objects read together in parallel: latency, not bandwidth, bounds S3 reads.
        await asyncio.gather(*(self._run(self._read_whole_into, self._name(k), v) for k, v in items))

    def local_path(self, key: str) -> str | None:
        return None  # remote: work for other processes is handed bytes (see archive.dicomweb.rendered)

    def open_sync(self, key: str) -> BinaryIO:
        name = self._name(key)
        size = self._head_size(name)
        return io.BufferedReader(_RangedFile(self, name, size), READ_AHEAD)

    def _head_size(self, name: str) -> int:
        with _errors(f"size of {name}"):
            return int(self.client.head_object(Bucket=self.bucket, Key=name)["ContentLength"])

    # -- listing and deleting ------------------------------------------------------------------

    def _list(self, folder: str, delimiter: str) -> list[str]:
        keys: list[str] = []
        with _errors(f"list of {folder or '/'}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder, **({"Delimiter": delimiter} if delimiter else {}))
            for page in pages:
                keys.extend(o["Key"][len(self.prefix):] for o in page.get("Contents", []))
        return sorted(keys)

    async def list(self, prefix: str) -> list[str]:
        return await self._run(self._list, self._name(prefix) + "/", "/")

    async def list_recursive(self, prefix: str = "") -> list[str]:
        """Every key below folder ``prefix`` ("" = the whole store), however deep: one listing
        of the bucket (``imaging-archive verify`` finds unindexed objects with it)."""
        return await self._run(self._list, self._name(prefix) + "/" if prefix else self.prefix, "")

    async def size(self, key: str) -> int:
        return await self._run(self._head_size, self._name(key))

    def _exists_key(self, name: str) -> bool:
        with _errors(f"lookup of {name}"):
            return self._exists(name)

    async def exists(self, key: str) -> bool:
        return await self._run(self._exists_key, self._name(key))

    def _delete(self, name: str) -> None:
        with _errors(f"delete of {name}"):
            self.client.delete_object(Bucket=self.bucket, Key=name)  # a missing key is no error

    async def delete(self, key: str) -> None:
        await self._run(self._delete, self._name(key))
