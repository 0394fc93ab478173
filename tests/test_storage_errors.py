"""Storage errors (issue 5): a full disk fails the instances it hits with 0xA700 (STOW-RS failure
reason, C-STORE status), indexes nothing of them, leaves no staged file, and the archive stores
the same instances once space returns.

Two ways to fill the disk: a store that answers ENOSPC as the OS does (injected through
``create_app(store_factory=...)``; no privileges needed), and a real tmpfs of 1 MiB under a real
``imaging-archive serve`` (needs mount rights; skipped without them).
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmread
from sqlalchemy.exc import OperationalError

from archive import keys
from archive.app import create_app
from archive.config import Config
from storage.filesystem import FilesystemStore, _FileWriter
from tests import synth
from tests.conftest import LiveServer, free_port, make_config, multipart

OUT_OF_RESOURCES = 0xA700
AET = "IMAGING-ARCHIVE"


class _FullDiskWriter(_FileWriter):
    """A staged file whose writes and links fail with ENOSPC as its store says."""

    _store: FullDiskStore

    def _write_all(self, data: bytes, tap: Any) -> None:
        limit = self._store.max_blob
        if self._store.full or (limit is not None and self.size + len(data) > limit):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super()._write_all(data, tap)

    def _link(self, key: str, durable: bool = True) -> list[Path]:
        if self._store.fail_commit and not key.startswith("journal/"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super()._link(key, durable)


class FullDiskStore(FilesystemStore):
    """The filesystem store on a disk that can run full: ``full`` (every write fails),
    ``max_blob`` (a blob growing past it fails: room for small files, not for big ones),
    ``fail_commit`` (instance blobs are written, but giving them their names fails)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.full = False
        self.max_blob: int | None = None
        self.fail_commit = False

    def heal(self) -> None:
        self.full = self.fail_commit = False
        self.max_blob = None

    async def create(self) -> _FileWriter:
        writer = await super().create()
        return _FullDiskWriter(self, writer.staged_path())


@pytest.fixture
def store(archive_config: Config) -> FullDiskStore:
    return FullDiskStore(archive_config.storage_path)


@pytest.fixture
async def full_client(aiohttp_client, archive_config: Config, store: FullDiskStore):
    return await aiohttp_client(create_app(archive_config, store_factory=lambda cfg: store))


async def stow(client, parts: list[bytes]) -> tuple[int, dict[str, Any]]:
    body, ctype = multipart(parts)
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.headers["Content-Type"].startswith("application/dicom+json"), await resp.text()
    return resp.status, await resp.json()


def failures(body: dict[str, Any]) -> list[tuple[int, str | None]]:
    return [(f["00081197"]["Value"][0], f.get("00081155", {}).get("Value", [None])[0])
            for f in body.get("00081198", {}).get("Value", [])]


def stored(body: dict[str, Any]) -> list[str]:
    return [s["00081155"]["Value"][0] for s in body.get("00081199", {}).get("Value", [])]


async def indexed(client) -> set[str]:
    resp = await client.get("/dicom-web/instances", params={"includefield": "00080018"})
    assert resp.status == 200
    return {d["00080018"]["Value"][0] for d in await resp.json()}


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_clean(cfg: Config, indexed_count: int) -> None:
    """No staged file, no journal left, and exactly the indexed instances have a blob."""
    root = cfg.storage_path
    assert files_under(root / "tmp") == []
    assert files_under(root / "data" / "journal") == []
    assert len(files_under(root / "data")) == indexed_count


def sop_of(data: bytes) -> str:
    return str(dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


# -- STOW-RS ------------------------------------------------------------------------------------


async def test_full_disk_fails_every_instance_with_a700_then_recovers(
        full_client, store: FullDiskStore, archive_config: Config) -> None:
    parts = [synth.instance() for _ in range(3)]
    sops = [sop_of(p) for p in parts]
    store.full = True
    status, body = await stow(full_client, parts)
    assert status == 409
    assert sorted(failures(body)) == sorted((OUT_OF_RESOURCES, None) for _ in sops)
    assert await indexed(full_client) == set()
    assert_clean(archive_config, 0)
    # Space returns: the same request stores everything.
    store.heal()
    status, body = await stow(full_client, parts)
    assert status == 200, body
    assert sorted(stored(body)) == sorted(sops)
    assert await indexed(full_client) == set(sops)
    assert_clean(archive_config, 3)


async def test_big_instance_hitting_a_full_disk_fails_alone(
        full_client, store: FullDiskStore, archive_config: Config) -> None:
    """Room for small files but not for a big one: the big one fails with 0xA700 in the middle
    of its part; the parts after it are still read and stored (202)."""
    small1, big, small2 = (synth.instance(), synth.instance(rows=256, columns=256), synth.instance())
    store.max_blob = 64 * 1024
    status, body = await stow(full_client, [small1, big, small2])
    assert status == 202, body
    assert failures(body) == [(OUT_OF_RESOURCES, None)]  # not parsed: its UIDs are not known
    assert sorted(stored(body)) == sorted([sop_of(small1), sop_of(small2)])
    assert await indexed(full_client) == {sop_of(small1), sop_of(small2)}
    assert_clean(archive_config, 2)
    store.heal()
    status, body = await stow(full_client, [small1, big, small2])
    assert status == 200, body
    assert await indexed(full_client) == {sop_of(small1), sop_of(big), sop_of(small2)}
    assert_clean(archive_config, 3)


async def test_full_disk_at_commit_fails_with_a700_and_indexes_nothing(
        full_client, store: FullDiskStore, archive_config: Config) -> None:
    """The bytes fit, but the disk fills before the blobs get their names."""
    parts = [synth.instance() for _ in range(2)]
    sops = [sop_of(p) for p in parts]
    store.fail_commit = True
    status, body = await stow(full_client, parts)
    assert status == 409
    # Parsed before the commit failed: the failure entries name the instances.
    assert sorted(failures(body)) == sorted((OUT_OF_RESOURCES, s) for s in sops)
    assert await indexed(full_client) == set()
    assert_clean(archive_config, 0)
    store.heal()
    status, body = await stow(full_client, parts)
    assert status == 200, body
    assert await indexed(full_client) == set(sops)
    assert_clean(archive_config, 2)


async def test_full_index_database_is_a700_and_leaves_no_blob(
        full_client, archive_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The index's disk fills (SQLite: "database or disk is full"): 0xA700, the committed blobs
    are removed again, and the next request stores."""
    ingest = full_client.app[keys.INGEST]
    real_add = ingest.writer.add

    async def full_add(records: Any) -> Any:
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(ingest.writer, "add", full_add)
    data = synth.instance()
    status, body = await stow(full_client, [data])
    assert status == 409
    assert failures(body) == [(OUT_OF_RESOURCES, sop_of(data))]
    assert_clean(archive_config, 0)
    monkeypatch.setattr(ingest.writer, "add", real_add)
    assert (await stow(full_client, [data]))[0] == 200
    assert await indexed(full_client) == {sop_of(data)}
    assert_clean(archive_config, 1)


# -- C-STORE ------------------------------------------------------------------------------------


@pytest.fixture
async def dimse_client(aiohttp_client, tmp_path: Path, store: FullDiskStore):
    cfg = make_config(tmp_path, dimse={"enabled": True, "port": free_port()})
    client = await aiohttp_client(create_app(cfg, store_factory=lambda cfg: store))
    client.dimse_port = cfg.dimse.port
    client.archive_config = cfg
    return client


def c_store(port: int, datasets: list[bytes]) -> list[int]:
    """C-STOREs on one association (pynetdicom as SCU); the status of each."""
    from pynetdicom import AE

    ae = AE(ae_title="STORESCU")
    ds_list = [dcmread(BytesIO(d)) for d in datasets]
    for ds in ds_list:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    try:
        out = []
        for ds in ds_list:
            status = assoc.send_c_store(ds)
            assert "Status" in status, "no C-STORE response: association lost"
            out.append(int(status.Status))
        return out
    finally:
        assoc.release()


async def test_c_store_on_a_full_disk_is_a700_then_recovers(dimse_client, store: FullDiskStore) -> None:
    """The DIMSE listener runs in the test's app (its handlers call back into this loop), so the
    SCU runs in a thread."""
    data = [synth.instance(), synth.instance()]
    store.full = True
    statuses = await asyncio.to_thread(c_store, dimse_client.dimse_port, data)
    assert statuses == [OUT_OF_RESOURCES, OUT_OF_RESOURCES]
    store.full = False
    store.fail_commit = True
    assert await asyncio.to_thread(c_store, dimse_client.dimse_port, data[:1]) == [OUT_OF_RESOURCES]
    assert await indexed(dimse_client) == set()
    assert_clean(dimse_client.archive_config, 0)
    store.heal()
    assert await asyncio.to_thread(c_store, dimse_client.dimse_port, data) == [0, 0]
    assert await indexed(dimse_client) == {sop_of(d) for d in data}
    assert_clean(dimse_client.archive_config, 2)


# -- a real full file system --------------------------------------------------------------------


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {proc.stderr.strip()}")


def test_real_full_tmpfs_stow_and_c_store_then_space_returns(tmp_path: Path) -> None:
    """The storage folder on a 1 MiB tmpfs under ``imaging-archive serve``: a 600 kB instance fits,
    the next does not (STOW-RS 409 / C-STORE 0xA700), nothing partial is left; after the file
    system grows, the same instances are stored."""
    files = tmp_path / "files"
    _mount_tmpfs(files, "1m")
    server = LiveServer(tmp_path, dimse=True)
    try:
        server.start()
        first, second, third = (synth.instance(rows=548, columns=548) for _ in range(3))
        assert 590_000 < len(first) < 610_000

        def post(data: bytes) -> tuple[int, dict[str, Any]]:
            body, ctype = multipart([data])
            resp = requests.post(server.url + "/dicom-web/studies", data=body,
                                 headers={"Content-Type": ctype}, timeout=30)
            return resp.status_code, resp.json()

        assert post(first)[0] == 200
        status, body = post(second)
        assert status == 409
        assert [code for code, _ in failures(body)] == [OUT_OF_RESOURCES]
        assert c_store(server.dimse_port, [third]) == [OUT_OF_RESOURCES]
        assert files_under(files / "tmp") == []
        assert files_under(files / "data" / "journal") == []
        resp = requests.get(server.url + "/dicom-web/instances", timeout=10)
        assert [d["00080018"]["Value"][0] for d in resp.json()] == [sop_of(first)]
        # Space returns: the file system grows, no restart.
        subprocess.run(["mount", "-o", "remount,size=4m", str(files)], check=True)
        assert post(second)[0] == 200
        assert c_store(server.dimse_port, [third]) == [0]
        resp = requests.get(server.url + "/dicom-web/instances", timeout=10)
        assert {d["00080018"]["Value"][0] for d in resp.json()} == {sop_of(d) for d in (first, second, third)}
        assert len(files_under(files / "data")) == 3
    finally:
        server.stop()
        subprocess.run(["umount", "-l", str(files)], capture_output=True)
