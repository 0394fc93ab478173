"""The blob stores' contract: staged writes, atomic commit, ranged reads, key checks, cleanup.
The tests taking ``store`` run on each backend: the filesystem, and S3 against moto in server
mode (tests/s3server.py); S3-only behaviour is in tests/test_s3.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from storage.base import BlobStore, InvalidKeyError, StorageError, StorageFullError, check_key
from storage.filesystem import FilesystemStore
from tests.s3server import ACCESS_KEY, REGION, SECRET_KEY, moto_s3  # noqa: F401 (fixture)

DATA = bytes(range(256)) * 40  # 10,240 bytes

Store = Any  # FilesystemStore or S3Store: both have tmp_dir, the folder of staged files


@pytest.fixture(params=["filesystem", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Makes store objects on one location (a folder, or a bucket), as restarted processes do."""
    if request.param == "filesystem":
        return lambda: FilesystemStore(tmp_path / "blobs")
    from storage.s3 import S3Store

    s3 = request.getfixturevalue("moto_s3")
    bucket = s3.new_bucket()
    return lambda: S3Store(bucket, tmp_path / "blobs", prefix="archive/a", endpoint_url=s3.endpoint,
                           region=REGION, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)


@pytest.fixture
async def store(make_store: Callable[[], Store]) -> AsyncIterator[Store]:
    s = make_store()
    await s.start()
    yield s
    s.close()


@pytest.fixture
async def fs_store(tmp_path: Path) -> FilesystemStore:
    s = FilesystemStore(tmp_path / "blobs")
    await s.start()
    return s


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def blobs(store: Store) -> list[str]:
    """Every committed key, however deep (the filesystem's data/, the bucket under the prefix)."""
    if isinstance(store, FilesystemStore):
        return [str(p.relative_to(store.data_dir)) for p in files(store.data_dir)]
    listed = await asyncio.to_thread(store.client.list_objects_v2, Bucket=store.bucket, Prefix=store.prefix)
    return sorted(o["Key"][len(store.prefix):] for o in listed.get("Contents", []))


async def read(store: BlobStore, key: str, start: int = 0, end: int | None = None,
               chunk_size: int = 1 << 20) -> bytes:
    return b"".join([c async for c in store.open_range(key, start, end, chunk_size)])


async def test_staged_write_commit_read_delete(store: Store) -> None:
    writer = await store.create()
    seen: list[bytes] = []
    for i in range(0, len(DATA), 1000):
        await writer.write(DATA[i:i + 1000], seen.append)
    await writer.write(b"")  # no-op
    assert writer.size == len(DATA)
    assert b"".join(seen) == DATA
    # Staged: in tmp/, invisible under data/ (in the bucket).
    staged = writer.staged_path()
    assert staged.parent == store.tmp_dir and staged.read_bytes() == DATA
    assert await blobs(store) == []
    key = "1.2.3/4.5.6/7.8.9.abc.dcm"
    assert not await store.exists(key)
    await writer.commit(key)
    assert not staged.exists()
    assert list(store.tmp_dir.iterdir()) == []
    assert await blobs(store) == [key]
    assert await store.exists(key)
    assert await store.size(key) == len(DATA)
    # Ranges: whole, [start, end), from start to the end, up to end, past the end, empty.
    assert await read(store, key) == DATA
    assert await read(store, key, 100, 300) == DATA[100:300]
    assert await read(store, key, 10_000) == DATA[10_000:]
    assert await read(store, key, 0, 7) == DATA[:7]
    assert await read(store, key, 10_000, 20_000) == DATA[10_000:]
    assert await read(store, key, 500, 500) == b""
    assert await read(store, key, 600, 500) == b""
    assert await read(store, key, 20_000) == b""
    chunks = [c async for c in store.open_range(key, 5, 5 + 2500, chunk_size=1000)]
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert b"".join(chunks) == DATA[5:2505]
    with store.open_sync(key) as fp:
        fp.seek(42)
        assert fp.read(10) == DATA[42:52]
        assert fp.seek(0, os.SEEK_END) == len(DATA) and fp.read(1) == b""
    assert await store.list("1.2.3/4.5.6") == [key] and await store.list("1.2.3") == []
    # Delete removes the file and the folders it leaves empty, not data/ itself.
    await store.delete(key)
    assert not await store.exists(key)
    assert await blobs(store) == []
    if isinstance(store, FilesystemStore):
        assert list(store.data_dir.iterdir()) == []
    await store.delete(key)  # deleting a missing blob is fine
    with pytest.raises(FileNotFoundError):
        await read(store, key)


async def test_delete_keeps_folders_still_in_use(store: Store) -> None:
    for key in ("s/a/1.dcm", "s/a/2.dcm", "s/b/3.dcm"):
        w = await store.create()
        await w.write(key.encode())
        await w.commit(key)
    await store.delete("s/a/1.dcm")
    await store.delete("s/b/3.dcm")
    assert await blobs(store) == ["s/a/2.dcm"]
    if isinstance(store, FilesystemStore):
        assert not (store.data_dir / "s/b").exists()
    assert await read(store, "s/a/2.dcm") == b"s/a/2.dcm"


async def test_commit_refuses_an_existing_key(store: Store) -> None:
    first = await store.create()
    await first.write(b"first")
    await first.commit("k/blob.dcm")
    second = await store.create()
    await second.write(b"second")
    with pytest.raises(StorageError) as info:
        await second.commit("k/blob.dcm")
    assert not isinstance(info.value, StorageFullError)
    assert await read(store, "k/blob.dcm") == b"first"
    assert list(store.tmp_dir.iterdir()) == []  # the refused staged file is gone


async def test_abort_leaves_nothing(store: Store) -> None:
    writer = await store.create()
    await writer.write(DATA)
    await writer.abort()
    await writer.abort()  # twice is harmless
    assert list(store.tmp_dir.iterdir()) == []
    assert await blobs(store) == []
    empty = await store.create()
    await empty.abort()
    assert list(store.tmp_dir.iterdir()) == []


BAD_KEYS = ["", ".", "..", "../escape.dcm", "a/../../escape.dcm", "a/./b.dcm", "/etc/passwd",
            "a//b.dcm", "a/", "/", "a b.dcm", "a\\b.dcm", "a\0b.dcm", "a\nb", "a.dcm\n", "ä.dcm",
            "a:b", "~/x", "a/*.dcm", "x" * 1025]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
async def test_bad_keys_are_rejected(store: Store, tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        check_key(key)
    writer = await store.create()
    await writer.write(b"x")
    with pytest.raises(InvalidKeyError):
        await writer.commit(key)
    await writer.abort()
    for op in (store.exists, store.size, store.delete):
        with pytest.raises(InvalidKeyError):
            await op(key)
    with pytest.raises(InvalidKeyError):
        await read(store, key)
    with pytest.raises(InvalidKeyError):
        store.open_sync(key)
    # Nothing was written anywhere.
    assert files(tmp_path) == []
    assert await blobs(store) == []


@pytest.mark.parametrize("key", ["a", "a.dcm", "1.2.3/4.5/6.7.8.0123abcd.dcm", "A-b_c/D.e", "x" * 1024])
def test_good_keys_are_accepted(key: str) -> None:
    assert check_key(key) == key


async def test_start_removes_leftover_staged_files(make_store: Callable[[], Store]) -> None:
    store = make_store()
    await store.start()
    kept = await store.create()
    await kept.write(b"kept")
    await kept.commit("a/kept.dcm")
    interrupted = await store.create()
    await interrupted.write(b"half a file")
    (store.tmp_dir / "other.part").write_bytes(b"x")
    # A restart (a new process would create a new store object).
    again = make_store()
    await again.start()
    assert list(again.tmp_dir.iterdir()) == []
    assert await read(again, "a/kept.dcm") == b"kept"
    await interrupted.abort()


async def test_write_to_a_full_disk_is_storage_full(fs_store: FilesystemStore) -> None:
    """ENOSPC from the OS becomes StorageFullError: after a first write, the staged file's
    descriptor is pointed at /dev/full, the device that always answers 'no space left on device'
    (no root, no mount, no mock)."""
    store = fs_store
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    writer = await store.create()
    await writer.write(b"a")
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, writer._fd)  # type: ignore[attr-defined]
    finally:
        os.close(full)
    with pytest.raises(StorageFullError):
        await writer.write(b"x" * 4096)
    assert writer.size == 1
    await writer.abort()
    assert list(store.tmp_dir.iterdir()) == []
    assert files(store.data_dir) == []


async def test_unusable_folder_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    store = FilesystemStore(blocker)
    with pytest.raises(StorageError) as info:
        writer = await store.create()
        await writer.write(b"x")
    assert not isinstance(info.value, StorageFullError)
