"""Every sample file through STOW-RS, QIDO-RS and WADO-RS (the archive core's contract)."""

from __future__ import annotations

import base64
import email.parser
import email.policy
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from archive.config import Config
from tests.conftest import make_config, multipart
from tests.samples import all_samples, rejected, storable


def parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart/related body, with the stdlib's MIME parser (independent of ours)."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    assert msg.is_multipart()
    return [(dict(p.items()), p.get_payload(decode=True)) for p in msg.iter_parts()]


def _distinct_by_uid() -> list[Any]:
    """Storable samples with one file per SOP Instance UID (some share UIDs on purpose)."""
    seen: dict[str, Any] = {}
    for s in storable():
        uid = dcmread(s.path, stop_before_pixels=True).SOPInstanceUID
        seen.setdefault(str(uid), s)
    return list(seen.values())


def _norm(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: ("<bulk>" if k in ("BulkDataURI", "InlineBinary") else _norm(v)) for k, v in x.items()}
    if isinstance(x, list):
        return [_norm(v) for v in x]
    return x


@pytest.fixture
def archive_config(tmp_path: Path) -> Config:
    """Harmonization off: the metadata must equal the file's own DICOM JSON, with no harmonized
    ProcedureCodeSequence item added (tests/test_procedure_codes.py covers that item)."""
    return make_config(tmp_path, harmonize={"enabled": False})


async def _stow(client, files: list[bytes], with_warnings: bool = False):
    body, ctype = multipart(files)
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    if with_warnings:
        return resp.status, await resp.json(), resp.headers.getall("Warning", [])
    return resp.status, await resp.json()


@pytest.mark.parametrize("sample", _distinct_by_uid(), ids=lambda s: s.name)
async def test_sample_round_trip(client, sample) -> None:
    data = sample.path.read_bytes()
    status, body = await _stow(client, [data])
    assert status == 200, body
    ref = body["00081199"]["Value"][0]
    original = dcmread(BytesIO(data))
    assert ref["00081155"]["Value"][0] == original.SOPInstanceUID
    study, series, sop = original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID

    # QIDO-RS at all three levels finds it with the right attributes.
    resp = await client.get("/dicom-web/studies", params={"StudyInstanceUID": study})
    studies = await resp.json()
    assert len(studies) == 1
    assert studies[0]["0020000D"]["Value"] == [study]
    assert studies[0]["00201208"]["Value"] == [1]  # NumberOfStudyRelatedInstances
    assert studies[0]["00080061"]["Value"] == [original.Modality] if original.get("Modality") else True
    resp = await client.get(f"/dicom-web/studies/{study}/series")
    found_series = await resp.json()
    assert [s["0020000E"]["Value"][0] for s in found_series] == [series]
    resp = await client.get(f"/dicom-web/studies/{study}/series/{series}/instances")
    found = await resp.json()
    assert found[0]["00080018"]["Value"] == [sop]
    assert found[0]["00080016"]["Value"] == [original.SOPClassUID]

    # WADO-RS returns the same bytes.
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    resp = await client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}",
                            headers={"Accept": accept})
    assert resp.status == 200
    parts = parse_multipart(await resp.read(), resp.headers["Content-Type"])
    assert len(parts) == 1
    assert parts[0][1] == data
    back = dcmread(BytesIO(parts[0][1]))
    if "PixelData" in original:
        assert back.PixelData == original.PixelData

    # Metadata equals pydicom's own DICOM JSON, apart from bulk data as URIs...
    resp = await client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata")
    assert resp.status == 200
    meta = (await resp.json())[0]
    expected = original.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda e: "x")
    assert _norm(meta) == _norm(expected)
    # ... and each top-level BulkDataURI serves exactly the value pydicom reads.
    for tag, elem in meta.items():
        if "BulkDataURI" in elem:
            uri = elem["BulkDataURI"]
            path = uri[uri.index("/dicom-web/"):]
            resp = await client.get(path)
            assert resp.status == 200, (tag, await resp.text())
            (_, value), = parse_multipart(await resp.read(), resp.headers["Content-Type"])
            want = original[int(tag, 16)].value
            if original.is_little_endian or elem["vr"] in ("OB", "UN"):
                assert value == want, tag
            else:
                assert len(value) == len(want), tag
        elif "InlineBinary" in elem:
            assert base64.b64decode(elem["InlineBinary"]) == original[int(tag, 16)].value


@pytest.mark.parametrize("sample", rejected(), ids=lambda s: s.name)
async def test_malformed_file_gets_failure_entry_and_others_survive(client, sample) -> None:
    good = next(s for s in storable())
    status, body, warnings = await _stow(client, [good.path.read_bytes(), sample.path.read_bytes()],
                                         with_warnings=True)
    assert status == 202, body
    assert len(body["00081199"]["Value"]) == 1
    failed = body["00081198"]["Value"]
    assert len(failed) == 1
    assert failed[0]["00081197"]["Value"][0] in (0xC000, 0xA900)
    assert any(sample.expected_error in w for w in warnings), warnings
    # The good instance of the same request is stored and retrievable.
    uid = body["00081199"]["Value"][0]["00081155"]["Value"][0]
    resp = await client.get("/dicom-web/instances", params={"SOPInstanceUID": uid})
    assert len(await resp.json()) == 1


async def test_every_sample_in_one_request(client) -> None:
    """All samples in one request: each storable one stored, each malformed one a failure entry."""
    samples = all_samples()
    status, body = await _stow(client, [s.path.read_bytes() for s in samples])
    stored = body.get("00081199", {}).get("Value", [])
    failed = body.get("00081198", {}).get("Value", [])
    assert status == (202 if failed else 200)
    assert len(stored) + len(failed) == len(samples)
    uids = {dcmread(s.path, stop_before_pixels=True).SOPInstanceUID for s in storable()}
    assert {r["00081155"]["Value"][0] for r in stored} == uids
