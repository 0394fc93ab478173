"""Harmonized study descriptions end to end (issue 6): placed at ingest, served as an item of
ProcedureCodeSequence in QIDO-RS and metadata, matched by QIDO-RS, re-applied after a mapping
change, reported when unmapped; the stored files are not changed."""

from __future__ import annotations

import subprocess
import sys
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from archive.app import create_app
from tests import synth
from tests.conftest import make_config, multipart

CHEST_2V = "42272-5"  # XR Chest PA and Lateral, in MIDRC's table for "XR CHEST PA AND LATERAL"
STUDIES = "/dicom-web/studies"
DICOM_JSON = {"Accept": "application/dicom+json"}


def _instance(study: str, description: str, modality: str = "DX", series: str | None = None,
              site_code: tuple[str, str, str] | None = None) -> bytes:
    ds = synth.dataset(study=study, series=series, modality=modality)
    ds.StudyDescription = description
    if site_code is not None:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = site_code
        ds.ProcedureCodeSequence = Sequence([item])
    return synth.encode(ds)


async def _stow(client: Any, parts: list[bytes]) -> None:
    body, ctype = multipart(parts)
    resp = await client.post(STUDIES, data=body, headers={"Content-Type": ctype, **DICOM_JSON})
    assert resp.status == 200, await resp.text()


def _codes(elem: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    if not elem:
        return []
    return [(i["00080100"]["Value"][0], i["00080102"]["Value"][0], i["00080104"]["Value"][0])
            for i in elem.get("Value", [])]


async def _study_result(client: Any, study: str) -> dict[str, Any]:
    resp = await client.get(STUDIES, params={"StudyInstanceUID": study}, headers=DICOM_JSON)
    assert resp.status == 200, await resp.text()
    (doc,) = await resp.json()
    return doc


async def test_code_is_placed_served_and_matched(aiohttp_client, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(make_config(tmp_path)))
    chest, other = synth.uid(), synth.uid()
    site = ("CHXR2", "99SITE", "Chest two views")
    sent = [_instance(chest, "XR CHEST PA AND LATERAL", site_code=site),
            _instance(chest, "XR CHEST PA AND LATERAL")]
    await _stow(client, sent)
    await _stow(client, [_instance(other, "QWERTY ZXCV PLOUGH", modality="CT")])

    doc = await _study_result(client, chest)
    assert _codes(doc.get("00081032")) == [(CHEST_2V, "LN", "XR Chest PA and Lateral"), site]
    assert "00081032" not in await _study_result(client, other)  # unmapped: no code, none sent

    for key in ("00081032.00080100", "ProcedureCodeSequence.CodeValue"):
        resp = await client.get(STUDIES, params={key: CHEST_2V}, headers=DICOM_JSON)
        assert [d["0020000D"]["Value"][0] for d in await resp.json()] == [chest]
        resp = await client.get(STUDIES, params={key: "24627-2"}, headers=DICOM_JSON)
        assert resp.status in (200, 204) and (resp.status == 204 or await resp.json() == [])

    resp = await client.get(f"{STUDIES}/{chest}/metadata", headers=DICOM_JSON)
    meta = await resp.json()
    ln = (CHEST_2V, "LN", "XR Chest PA and Lateral")
    assert sorted(_codes(m.get("00081032")) for m in meta) == sorted([[ln, site], [ln]])
    resp = await client.get(f"{STUDIES}/{other}/metadata", headers=DICOM_JSON)
    assert all("00081032" not in m for m in await resp.json())

    # The stored files are as sent (the code lives in the index, not in the file).
    for data in sent:
        ds = dcmread(BytesIO(data))
        url = f"{STUDIES}/{chest}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        resp = await client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                                        'transfer-syntax=*'})
        body = await resp.read()
        assert data[132:] in body  # the data set, byte for byte


async def test_unmapped_report_and_apply_after_an_override(aiohttp_client, tmp_path: Path) -> None:
    cfg_path = tmp_path / "archive.toml"
    cfg_path.write_text(f'[storage]\npath = "{tmp_path / "files"}"\n'
                        f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "index.db"}"\n'
                        '[dimse]\nenabled = false\n[ingest]\nparse_processes = 0\n'
                        '[render]\ncodec_processes = 0\n')
    client = await aiohttp_client(create_app(make_config(tmp_path)))
    odd = [synth.uid() for _ in range(3)]
    for study in odd:
        await _stow(client, [_instance(study, "PLOUGH QWERTY", modality="CT")])
    await _stow(client, [_instance(synth.uid(), "ZXCV ONCE", modality="CT")])
    resp = await client.get("/api/harmonization/unmapped")
    rows = await resp.json()
    assert [(r["StudyDescription"], r["Modality"], r["frequency"]) for r in rows] == [
        ("PLOUGH QWERTY", "CT", 3), ("ZXCV ONCE", "CT", 1)]
    assert all(r["reason"] for r in rows)
    assert (await client.get("/api/harmonization/unmapped", params={"limit": "x"})).status == 400

    # The curator maps the description; apply re-places the stored studies, metadata follows.
    override = tmp_path / "overrides.tsv"
    override.write_text("Modality\tStudyDescription\tLOINC code\tL-Long Common Name\n"
                        "CT\tPLOUGH QWERTY\t29252-4\tCT Chest WO contrast\n")
    with cfg_path.open("a") as f:
        f.write(f'[harmonize]\noverride_file = "{override}"\n')
    out = _cli("harmonize", "apply", "--config", str(cfg_path))
    assert "4 studies; 3 changed" in out and "1 override" not in out and "3 override" in out
    for study in odd:
        doc = await _study_result(client, study)
        assert _codes(doc.get("00081032")) == [("29252-4", "LN", "CT Chest WO contrast")]
        resp = await client.get(f"{STUDIES}/{study}/metadata", headers=DICOM_JSON)
        assert [_codes(m.get("00081032")) for m in await resp.json()] == [
            [("29252-4", "LN", "CT Chest WO contrast")]]
    report = _cli("harmonize", "unmapped", "--config", str(cfg_path))
    assert report.splitlines() == ["StudyDescription\tModality\tfrequency\tContributor\treason",
                                   report.splitlines()[1]]
    assert report.splitlines()[1].startswith("ZXCV ONCE\tCT\t1\t")


def test_preview_writes_the_placements_of_a_site_list(tmp_path: Path) -> None:
    source = tmp_path / "site.tsv"
    source.write_text("Modality\tStudyDescription\tfrequency\r\nDX\tXR CHEST PA AND LATERAL\t10\r\n"
                      "CR\tPLOUGH QWERTY\t3\r\n", encoding="utf-8")
    lines = _cli("harmonize", "preview", str(source)).splitlines()
    assert lines[0].split("\t") == ["Modality", "StudyDescription", "LOINC code", "L-Long Common Name",
                                    "confidence", "reason"]
    assert lines[1].split("\t")[:5] == ["DX", "XR CHEST PA AND LATERAL", CHEST_2V,
                                        "XR Chest PA and Lateral", "1.00"]
    cols = lines[2].split("\t")
    assert cols[:4] == ["CR", "PLOUGH QWERTY", "", ""] and cols[5]  # unmapped, with a reason
    bad = tmp_path / "bad.tsv"
    bad.write_text("Mod\tDesc\nDX\tXR CHEST\n")
    proc = subprocess.run([sys.executable, "-m", "archive", "harmonize", "preview", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Modality" in proc.stderr


def _cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout

