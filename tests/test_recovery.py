"""Start-up recovery: leftovers of a crash between storage commit and index commit are removed,
indexed instances are kept."""

from __future__ import annotations

import json

from archive.app import create_app
from storage.base import HOST_TAG
from storage.filesystem import FilesystemStore
from tests.conftest import make_config, multipart
from tests.samples import storable


async def _put(store: FilesystemStore, key: str, data: bytes) -> None:
    blob = await store.create()
    await blob.write(data)
    await blob.commit(key)


async def test_restart_removes_unindexed_blobs_of_an_interrupted_batch(aiohttp_client, tmp_path) -> None:
    cfg = make_config(tmp_path)
    client = await aiohttp_client(create_app(cfg))
    body, ctype = multipart([storable()[0].path.read_bytes()])
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 200
    sop = (await resp.json())["00081199"]["Value"][0]["00081155"]["Value"][0]
    data_dir = cfg.storage_path / "data"
    (indexed,) = [p for p in data_dir.rglob("*.dcm")]
    indexed_key = indexed.relative_to(data_dir).as_posix()
    await client.close()

    # What a crash leaves: a journalled batch whose second blob was linked but never indexed,
    # and a staged file that never got a name.
    store = FilesystemStore(cfg.storage_path)
    orphan_key = "1.2.3/1.2.3.4/1.2.3.4.5.0123456789ab.dcm"
    await _put(store, orphan_key, b"not indexed")
    await _put(store, "journal/crash.json",
               json.dumps([[sop, indexed_key], ["1.2.3.4.5", orphan_key]]).encode())
    (store.tmp_dir / "leftover.part").write_bytes(b"half")
    store.close()

    client = await aiohttp_client(create_app(cfg))
    assert indexed.exists()
    assert not (data_dir / orphan_key).exists()
    assert not (data_dir / "journal").exists()  # emptied, so removed
    assert list(store.tmp_dir.iterdir()) == []
    resp = await client.get("/dicom-web/instances")
    assert [i["00080018"]["Value"][0] for i in await resp.json()] == [sop]


async def test_no_journal_left_after_normal_batches(client, archive_config) -> None:
    files = [s.path.read_bytes() for s in storable()[:3]]
    body, ctype = multipart(files)
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status in (200, 202)
    journal = archive_config.storage_path / "data" / "journal"
    assert not journal.exists() or list(journal.iterdir()) == []


async def test_restart_leaves_the_journals_of_other_hosts_alone(aiohttp_client, tmp_path) -> None:
    """Hosts sharing a bucket see each other's journals: a process id is only meaningful on its
    own host, so a starting host recovers its own dead processes' batches, never another host's
    (whose blobs may be about to be indexed)."""
    cfg = make_config(tmp_path)
    store = FilesystemStore(cfg.storage_path)
    await store.start()
    theirs, ours = "1.2.3/1.2.3.4/1.2.3.4.6.0123456789ab.dcm", "1.2.3/1.2.3.4/1.2.3.4.7.0123456789ab.dcm"
    await _put(store, theirs, b"another host's batch in flight")
    await _put(store, ours, b"this host's dead batch")
    # Neither process id runs here: that decides for this host's journal, not for another's.
    await _put(store, "journal/999999998-h00000000-a.json", json.dumps([["1.2.3.4.6", theirs]]).encode())
    await _put(store, f"journal/999999999-{HOST_TAG}-b.json", json.dumps([["1.2.3.4.7", ours]]).encode())
    store.close()

    client = await aiohttp_client(create_app(cfg))
    data_dir = cfg.storage_path / "data"
    assert (data_dir / theirs).exists() and (data_dir / "journal" / "999999998-h00000000-a.json").exists()
    assert not (data_dir / ours).exists()
    assert not (data_dir / "journal" / f"999999999-{HOST_TAG}-b.json").exists()
    await client.close()
