"""De-identification in the ingest pipeline (issue 7): STOW-RS and C-STORE store the
de-identified instance, nothing of the original identifiers reaches the stored files or the
index, pseudonyms link a patient's studies, harmonization places the description as sent, and a
burned-in annotation quarantines the patient."""

from __future__ import annotations

import sqlite3
import zlib
from datetime import date
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from archive.app import create_app
from archive.config import load
from tests import synth
from tests.conftest import multipart
from tests.dcmtk import tool
from tests.test_deid import plant_everything
from tests.test_dimse import AET, run
from tests.test_roundtrip import parse_multipart

STUDIES = "/dicom-web/studies"
DICOM_JSON = {"Accept": "application/dicom+json"}


def _config(tmp_path: Path, dimse_port: int | None = None) -> Path:
    secret = tmp_path / "deid.secret"
    secret.write_text("a-test-secret-of-enough-length-0123456789\n")
    secret.chmod(0o600)
    dimse = (f'[dimse]\nenabled = true\nhost = "127.0.0.1"\nport = {dimse_port}\n' if dimse_port
             else "[dimse]\nenabled = false\n")
    path = tmp_path / "archive.toml"
    path.write_text(f'[storage]\npath = "{tmp_path / "files"}"\n'
                    f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "index.db"}"\n{dimse}'
                    '[ingest]\nparse_processes = 0\n[render]\ncodec_processes = 0\n'
                    f'[deidentify]\nenabled = true\nsecret_file = "{secret}"\n', encoding="utf-8")
    return path


def _everything_stored(tmp_path: Path) -> bytes:
    """The stored files and every value of the index (stored JSON inflated), as one haystack."""
    parts = [p.read_bytes() for p in (tmp_path / "files").rglob("*") if p.is_file()]
    with sqlite3.connect(tmp_path / "index.db") as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in db.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 - names from the schema
                for value in row:
                    if isinstance(value, bytes):
                        parts.append(zlib.decompress(value) if value[:1] == b"\x78" else value)
                    elif value is not None:
                        parts.append(str(value).encode("utf-8"))
    return b"\n".join(parts)


async def _stow(client: Any, parts: list[bytes]) -> dict[str, Any]:
    body, ctype = multipart(parts)
    resp = await client.post(STUDIES, data=body, headers={"Content-Type": ctype, **DICOM_JSON})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_stow_stores_only_the_deidentified_instance(aiohttp_client, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(load(_config(tmp_path))))
    first = synth.dataset(patient_id="MRN-778899", patient_name="Doe^Jane", rows=32, columns=32)
    plan = plant_everything(first)
    first.StudyDescription = "CT CHEST W/O CONTRAST Jane Doe"
    first.StudyDate = "20210315"
    second = synth.dataset(patient_id="MRN-778899", patient_name="Doe^Jane", rows=32, columns=32)
    second.StudyDate = "20210401"
    sent = [synth.encode(first), synth.encode(second)]
    reply = await _stow(client, sent)

    items = reply["00081199"]["Value"]
    assert [i["00081155"]["Value"][0] for i in items] == [first.SOPInstanceUID, second.SOPInstanceUID]
    assert all(i["00081196"]["Value"] == [0xB000] for i in items)  # coercion of data elements
    originals = [first.SOPInstanceUID, first.StudyInstanceUID, first.SeriesInstanceUID,
                 second.SOPInstanceUID, second.StudyInstanceUID, "MRN-778899", "Doe^Jane", "20210315"]
    haystack = _everything_stored(tmp_path)
    survivors = [n for n in [*plan.gone, *(o.encode() for o in originals)] if n in haystack]
    assert survivors == []

    resp = await client.get(STUDIES, params={"includefield": "all"}, headers=DICOM_JSON)
    studies = await resp.json()
    assert len(studies) == 2
    pseudonyms = {s["00100020"]["Value"][0] for s in studies}
    assert len(pseudonyms) == 1 and "MRN" not in pseudonyms.pop()  # one patient, linked
    a, b = sorted(date.fromisoformat(s["00080020"]["Value"][0]) for s in studies)
    assert (b - a).days == 17 and b != date(2021, 4, 1)  # one shift for both of the patient's studies
    chest = next(s for s in studies if s.get("00081030", {}).get("Value", [""])[0].startswith("CT CHEST"))
    assert "Jane" not in chest["00081030"]["Value"][0]
    codes = [i["00080100"]["Value"][0] for i in chest.get("00081032", {}).get("Value", [])]
    assert codes == ["29252-4"]  # CT Chest WO contrast, placed from the description as sent

    # Pixel data unchanged: the instance retrieved as stored has the sent pixels.
    url = (f"{STUDIES}/{items[0]['00081190']['Value'][0].split('/studies/')[1]}")
    resp = await client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                                    'transfer-syntax=*'})
    ((_, part),) = parse_multipart(await resp.read(), resp.headers["Content-Type"])
    stored = dcmread(BytesIO(part))
    assert stored.PixelData == first.PixelData and stored.PatientIdentityRemoved == "YES"


async def test_burned_in_annotation_quarantines_the_patient(aiohttp_client, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(load(_config(tmp_path))))
    ds = synth.dataset(patient_id="BURNED-1")
    ds.BurnedInAnnotation = "YES"
    await _stow(client, [synth.encode(ds), synth.instance(patient_id="CLEAN-1")])
    quarantined = await (await client.get("/api/quarantine")).json()
    assert len(quarantined) == 1 and quarantined[0]["reason"] and "BURNED" not in str(quarantined)
    log = await (await client.get("/api/release/log")).json()
    assert [(e["state"], e["actor"], e["rule"]) for e in log] == [("quarantined", "ingest", "deidentify")]
    # An admin deletes the quarantined data: index rows, then files; the clean patient stays.
    files_before = [p for p in (tmp_path / "files" / "data").rglob("*.dcm")]
    pid = quarantined[0]["patient_id"]
    assert (await client.delete("/api/quarantine/NOBODY")).status == 404
    resp = await client.delete(f"/api/quarantine/{pid}")
    assert resp.status == 200 and (await resp.json())["deleted_instances"] == 1
    assert await (await client.get("/api/quarantine")).json() == []
    assert len([p for p in (tmp_path / "files" / "data").rglob("*.dcm")]) == len(files_before) - 1
    studies = await (await client.get(STUDIES, headers=DICOM_JSON)).json()
    assert len(studies) == 1 and studies[0]["00100020"]["Value"][0] != pid
    assert (await client.delete(f"/api/quarantine/{studies[0]['00100020']['Value'][0]}")).status == 404
    log = await (await client.get("/api/release/log")).json()
    assert log[-1]["state"] == "deleted" and log[-1]["patient_id"] == pid


def test_cstore_answers_coercion_and_stores_deidentified(tmp_path: Path) -> None:
    from tests.conftest import LiveServer

    root = tmp_path / "srv"
    root.mkdir()
    secret = root / "deid.secret"
    secret.write_text("another-test-secret-0123456789abcdef\n")
    server = LiveServer(root, f'[deidentify]\nenabled = true\nsecret_file = "{secret}"\n', dimse=True)
    server.start()
    try:
        path = tmp_path / "in.dcm"
        ds = synth.dataset(patient_id="CSTORE-MRN-1", patient_name="Roe^Richard")
        path.write_bytes(synth.encode(ds))
        code, out = run([tool("storescu"), "-v", "-aet", "PACS", "-aec", AET, "127.0.0.1",
                         str(server.dimse_port), str(path)])
        assert code == 0 and "Warning: CoercionOfDataElements" in out, out[-800:]  # 0xB000
        stored = [p.read_bytes() for p in (root / "files").rglob("*.dcm")]
        assert len(stored) == 1
        for original in (b"CSTORE-MRN-1", b"Roe^Richard", ds.SOPInstanceUID.encode()):
            assert original not in stored[0]
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _needs_dcmtk() -> None:
    tool("storescu")


async def test_a_missing_secret_is_made_at_the_first_start(aiohttp_client, tmp_path: Path) -> None:
    cfg_path = _config(tmp_path)
    secret = tmp_path / "deid.secret"
    secret.unlink()
    client = await aiohttp_client(create_app(load(cfg_path)))
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_bytes().strip()) >= 32
    made = secret.read_bytes()
    await _stow(client, [synth.instance(patient_id="FIRST-START")])
    assert secret.read_bytes() == made  # kept: the next start uses it
