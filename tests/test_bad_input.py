"""Bad PS3.10 files (issue 5): every file of the generated corpus (tests/badfiles.py), STOWed alone
and among good ones, and sent over DIMSE, gets a failure entry or status with a reason; the good
ones are stored; nothing answers 5xx; what was stored before is unchanged, byte for byte."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from archive.config import Config
from tests import badfiles, synth
from tests.conftest import LiveServer, multipart
from tests.test_large_upload import _PeakRss as PeakRss

CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH = 0xA900
CORPUS = badfiles.corpus(include_bomb=False)


def _is_failure(status: int) -> bool:
    # PS3.4 Annex B: 0xCxxx "cannot understand", 0xA9xx "does not match SOP class".
    return status & 0xF000 == 0xC000 or status & 0xFF00 == 0xA900


def stored_hashes(storage: Path) -> dict[str, str]:
    """sha256 of every stored blob, by path under the storage folder's data/."""
    data = storage / "data"
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file()}


def leftovers(storage: Path) -> list[Path]:
    tmp = storage / "tmp"
    return [p for p in tmp.rglob("*") if p.is_file()] if tmp.exists() else []


async def stow(client: Any, parts: list[bytes]) -> tuple[int, dict[str, Any], list[str]]:
    body, ctype = multipart(parts)
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    is_json = resp.headers.get("Content-Type", "").startswith("application/dicom+json")
    data = await resp.json() if is_json else {}
    return resp.status, data, resp.headers.getall("Warning", [])


def seq(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return body.get(tag, {}).get("Value", [])


async def test_each_bad_file_alone_is_refused_with_a_reason(client, archive_config: Config) -> None:
    good = [synth.instance(), synth.instance()]
    status, _, _ = await stow(client, good)
    assert status == 200
    before = stored_hashes(archive_config.storage_path)
    wrong: dict[str, str] = {}
    for bad in CORPUS:
        status, body, warnings = await stow(client, [bad.data])
        failed = seq(body, "00081198")
        reasons = [item["00081197"]["Value"][0] for item in failed]
        if status != 409 or len(failed) != 1 or seq(body, "00081199") or not _is_failure(reasons[0]):
            wrong[bad.name] = f"{status} {body}"
        elif not warnings or ":" not in warnings[0]:
            wrong[bad.name] = f"no reason given: {warnings}"
    assert not wrong, wrong
    assert stored_hashes(archive_config.storage_path) == before
    assert leftovers(archive_config.storage_path) == []


async def test_bad_files_among_good_ones(client, archive_config: Config) -> None:
    """One request: good, bad, good, bad, ... good. Each bad one gets its failure entry (in order,
    as many as sent), each good one is stored; earlier data is unchanged."""
    earlier = synth.instance()
    assert (await stow(client, [earlier]))[0] == 200
    before = stored_hashes(archive_config.storage_path)
    goods = [synth.dataset() for _ in range(len(CORPUS) + 1)]
    parts: list[bytes] = []
    for good, bad in zip(goods, CORPUS + [None], strict=True):
        parts.append(synth.encode(good))
        if bad is not None:
            parts.append(bad.data)
    status, body, warnings = await stow(client, parts)
    assert status == 202, body
    stored = {item["00081155"]["Value"][0] for item in seq(body, "00081199")}
    assert stored == {str(g.SOPInstanceUID) for g in goods}
    failed = seq(body, "00081198")
    assert len(failed) == len(CORPUS)
    assert all(_is_failure(item["00081197"]["Value"][0]) for item in failed), failed
    assert warnings
    after = stored_hashes(archive_config.storage_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert len(after) == len(before) + len(goods)
    assert leftovers(archive_config.storage_path) == []
    for good in goods[:3]:  # and they read back
        path = (f"/dicom-web/studies/{good.StudyInstanceUID}/series/{good.SeriesInstanceUID}"
                f"/instances/{good.SOPInstanceUID}/metadata")
        assert (await client.get(path)).status == 200


async def test_tolerated_flaws_store_the_same_instance(client) -> None:
    """A wrong or missing File Meta group length is tolerated (as by pydicom and DCMTK), and the
    data set is hashed from where it really starts: the clean file sent afterwards is the same
    instance (stored already), not a conflicting one."""
    for name, data in badfiles.tolerated(valid := synth.instance()).items():
        status, body, _ = await stow(client, [data])
        assert status == 200, (name, body)
        status, body, _ = await stow(client, [valid])
        assert status == 200, (name, body)
        valid = synth.instance()


def test_deflate_bomb_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    """A 4 MB deflated data set that inflates to 4 GB: refused in seconds, the server's memory
    stays within the inflate limit (pydicom would inflate it whole), a good deflated file is
    stored beside it."""
    bomb = badfiles.deflate_bomb()
    server = LiveServer(tmp_path)
    server.start()
    try:
        requests.get(server.url + "/dicom-web/studies", timeout=10)  # warm up
        rss = psutil.Process(server.proc.pid).memory_info().rss
        sampler = PeakRss(server.proc.pid)
        sampler.start()
        body, ctype = multipart([bomb, badfiles.good_deflated()])
        start = time.monotonic()
        resp = requests.post(server.url + "/dicom-web/studies", data=body,
                             headers={"Content-Type": ctype}, timeout=60)
        took = time.monotonic() - start
        sampler.done.set()
        sampler.join()
        growth = sampler.peak - rss
        assert resp.status_code == 202, resp.text
        failed = resp.json()["00081198"]["Value"]
        assert len(failed) == 1 and failed[0]["00081197"]["Value"] == [CANNOT_UNDERSTAND]
        assert "inflates to more than" in resp.headers["Warning"]
        assert len(resp.json()["00081199"]["Value"]) == 1
        assert took < 20, took
        # Peak RSS, sampled every 20 ms: the inflate check holds at most 1 MiB at a time.
        assert growth < 150 * 1024 ** 2, growth
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        assert "Traceback" not in (tmp_path / "server.log").read_text(errors="replace")
    finally:
        server.stop()


def test_bad_files_over_dimse(tmp_path: Path) -> None:
    """The corpus's files whose File Meta is intact, C-STOREd as their own bytes (pynetdicom's
    chunked sending) on one association: each gets a failure status on an association that
    stays usable; a good instance after them is stored; earlier data is unchanged."""
    from pydicom.uid import (
        CTImageStorage,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEGBaseline8Bit,
    )
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import Verification

    server = LiveServer(tmp_path, dimse=True)
    server.start()
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        body, ctype = multipart([synth.instance()])
        assert requests.post(server.url + "/dicom-web/studies", data=body,
                             headers={"Content-Type": ctype}, timeout=30).status_code == 200
        storage = tmp_path / "files"
        before = stored_hashes(storage)
        ae = AE(ae_title="BADFILES")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                                  ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
                                                  JPEGBaseline8Bit])
        ae.add_requested_context(Verification)
        files = [b for b in CORPUS if b.dimse]
        assert len(files) > 30
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="IMAGING-ARCHIVE")
        assert assoc.is_established
        got: dict[str, str] = {}
        for n, bad in enumerate(files):
            path = tmp_path / f"bad{n}.dcm"
            path.write_bytes(bad.data)
            try:
                status = assoc.send_c_store(path)
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                # pynetdicom refuses to send it (e.g. an invalid UID in the request): not a
                # server matter.
                got[bad.name] = f"not sent: {exc}"
                continue
            assert "Status" in status, f"{bad.name}: association lost"
            if not _is_failure(int(status.Status)):
                got[bad.name] = hex(int(status.Status))
        sent_bad = [name for name in got if not got[name].startswith("not sent")]
        assert not sent_bad, got
        assert len(got) < len(files) // 2, got  # most of the corpus does reach the server
        fine = tmp_path / "fine.dcm"
        fine.write_bytes(synth.instance())
        assert int(assoc.send_c_store(fine).Status) == 0
        assoc.release()
        after = stored_hashes(storage)
        assert {k: v for k, v in after.items() if k in before} == before
        assert len(after) == len(before) + 1
        assert leftovers(storage) == []
        # A new association works too.
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="IMAGING-ARCHIVE")
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
        assert "Traceback" not in (tmp_path / "server.log").read_text(errors="replace")
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
        server.stop()


@pytest.mark.parametrize("bad", [b for b in CORPUS if b.region == "uid"][:3], ids=lambda b: b.name)
async def test_invalid_uids_never_reach_storage_paths(client, archive_config: Config, bad) -> None:
    """Path-like UIDs ("../..", "/") are refused before any storage key is made of them."""
    status, _, _ = await stow(client, [bad.data])
    assert status == 409
    root = archive_config.storage_path
    assert all(".." not in p.parts for p in root.rglob("*"))
    assert not (root.parent / "etc").exists()
