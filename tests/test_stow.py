"""STOW-RS (PS3.18 §10.5): media types, broken bodies, failure reasons, duplicates, big files."""

from __future__ import annotations

import asyncio
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from archive.app import create_app
from archive.config import Config
from tests import synth
from tests.conftest import make_config, multipart
from tests.samples import storable

# Run on SQLite and on PostgreSQL (tests/pg.py).
pytestmark = pytest.mark.databases

DOES_NOT_MATCH = 0xA900  # 43264
DUPLICATE_SOP_INSTANCE = 0x0111  # 273
CANNOT_UNDERSTAND = 0xC000


async def stow(client, parts: list[bytes], study: str | None = None) -> tuple[int, dict[str, Any]]:
    body, ctype = multipart(parts)
    path = "/dicom-web/studies" + (f"/{study}" if study else "")
    resp = await client.post(path, data=body, headers={"Content-Type": ctype})
    ctype_back = resp.headers.get("Content-Type", "")
    data = await resp.json() if ctype_back.startswith("application/dicom+json") else {}
    return resp.status, data


def values(body: dict[str, Any], tag: str) -> list[Any]:
    return body.get(tag, {}).get("Value", [])


def blobs(cfg: Config) -> list[Path]:
    return sorted(p for p in (cfg.storage_path / "data").rglob("*") if p.is_file())


def staged(cfg: Config) -> list[Path]:
    return sorted((cfg.storage_path / "tmp").iterdir())


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """Part payloads of a multipart body; a plain split, fast on a 40 MB body."""
    boundary = next(p.split("=", 1)[1].strip().strip('"') for p in content_type.split(";")
                    if p.strip().lower().startswith("boundary="))
    delim = b"--" + boundary.encode()
    pieces = body.split(b"\r\n" + delim)
    assert pieces[0].startswith(delim + b"\r\n")
    assert pieces[-1] in (b"--\r\n", b"--")
    out = []
    for piece in pieces[:-1]:
        _, _, payload = piece.partition(b"\r\n\r\n")
        out.append(payload)
    return out


async def retrieve_bytes(client, study: str, series: str, sop: str) -> bytes:
    resp = await client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}")
    assert resp.status == 200
    (data,) = split_multipart(await resp.read(), resp.headers["Content-Type"])
    return data


async def qido(client, path: str, **params: str) -> list[dict[str, Any]]:
    resp = await client.get(path, params=params)
    assert resp.status == 200, await resp.text()
    return await resp.json()


# -- media types and broken bodies ---------------------------------------------------------------


@pytest.mark.parametrize("ctype", [
    "application/json",
    'multipart/related; type="application/dicom+json"; boundary=abc',
    "multipart/related; type=application/dicom+json; boundary=abc",
    "application/dicom",
])
async def test_unsupported_content_type_is_415(client, archive_config, ctype) -> None:
    body, _ = multipart([synth.instance()])
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 415, await resp.text()
    assert blobs(archive_config) == []


async def test_multipart_without_type_parameter_means_application_dicom(client) -> None:
    body, ctype = multipart([synth.instance()])
    boundary = ctype.rsplit("boundary=", 1)[1]
    resp = await client.post("/dicom-web/studies", data=body,
                             headers={"Content-Type": f"multipart/related; boundary={boundary}"})
    assert resp.status == 200, await resp.text()
    # Exactly this media type: dicomweb-client, for one, compares it without parameters.
    assert resp.headers["Content-Type"] == "application/dicom+json"


def _truncated_in_part_headers() -> tuple[bytes, str]:
    body, ctype = multipart([synth.instance()])
    return body[:body.index(b"Content-Type") + 18], ctype


def _truncated_in_second_part() -> tuple[bytes, str]:
    first = synth.instance()
    body, ctype = multipart([first, synth.instance()])
    return body[:len(first) + 200], ctype


def _wrong_boundary() -> tuple[bytes, str]:
    body, ctype = multipart([synth.instance()])
    return body, ctype.rsplit("boundary=", 1)[0] + "boundary=" + uuid.uuid4().hex


def _garbage() -> tuple[bytes, str]:
    _, ctype = multipart([])
    return b"this is not a multipart body\r\n" * 20, ctype


def _no_parts() -> tuple[bytes, str]:
    return multipart([])


def _empty() -> tuple[bytes, str]:
    _, ctype = multipart([])
    return b"", ctype


def _no_boundary() -> tuple[bytes, str]:
    body, _ = multipart([synth.instance()])
    return body, 'multipart/related; type="application/dicom"'


def _empty_boundary() -> tuple[bytes, str]:
    body, _ = multipart([synth.instance()])
    return body, 'multipart/related; type="application/dicom"; boundary=""'


@pytest.mark.parametrize("make", [
    _no_boundary, _empty_boundary, _wrong_boundary, _truncated_in_second_part,
    _truncated_in_part_headers, _garbage, _no_parts, _empty,
], ids=lambda f: f.__name__.strip("_"))
async def test_broken_body_is_400_and_leaves_nothing(client, archive_config, make) -> None:
    body, ctype = make()
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 400, await resp.text()
    # Nothing of a broken request is kept: no index entry, no blob, no staged file.
    assert await qido(client, "/dicom-web/instances") == []
    assert blobs(archive_config) == []
    assert staged(archive_config) == []


async def test_invalid_study_uid_in_url_is_400(client) -> None:
    body, ctype = multipart([synth.instance()])
    resp = await client.post("/dicom-web/studies/1.2.abc", data=body, headers={"Content-Type": ctype})
    assert resp.status == 400


# -- response content ---------------------------------------------------------------------------


async def test_response_attributes(client) -> None:
    study, series = synth.uid(), synth.uid()
    sops = [synth.uid(), synth.uid()]
    status, body = await stow(client, [synth.instance(study=study, series=series, sop=s) for s in sops])
    assert status == 200, body
    base = str(client.make_url("/dicom-web"))
    assert values(body, "00081190") == [f"{base}/studies/{study}"]
    assert "00081198" not in body
    refs = values(body, "00081199")
    assert [r["00081155"]["Value"][0] for r in refs] == sops
    for ref, sop in zip(refs, sops, strict=True):
        assert ref["00081150"] == {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}
        assert ref["00081190"] == {
            "vr": "UR", "Value": [f"{base}/studies/{study}/series/{series}/instances/{sop}"]}
    # Both URLs work as given.
    resp = await client.session.get(values(body, "00081190")[0])
    assert resp.status == 200
    resp = await client.session.get(refs[1]["00081190"]["Value"][0])
    assert resp.status == 200


async def test_instance_of_another_study_fails_with_a900_and_the_rest_is_stored(client) -> None:
    study, other_study = synth.uid(), synth.uid()
    good, bad = synth.uid(), synth.uid()
    status, body = await stow(client, [synth.instance(study=study, sop=good),
                                       synth.instance(study=other_study, sop=bad)], study=study)
    assert status == 202, body
    (failed,) = values(body, "00081198")
    assert failed["00081197"] == {"vr": "US", "Value": [DOES_NOT_MATCH]}
    assert failed["00081155"]["Value"] == [bad]
    assert failed["00081150"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]
    assert [r["00081155"]["Value"][0] for r in values(body, "00081199")] == [good]
    assert values(body, "00081190")[0].endswith(f"/studies/{study}")
    assert [i["00080018"]["Value"][0] for i in await qido(client, "/dicom-web/instances")] == [good]
    assert await qido(client, "/dicom-web/studies", StudyInstanceUID=other_study) == []


async def test_all_failing_is_409(client, archive_config) -> None:
    study = synth.uid()
    status, body = await stow(client, [synth.instance(study=synth.uid()), b"not a DICOM file"],
                              study=study)
    assert status == 409, body
    reasons = sorted(f["00081197"]["Value"][0] for f in values(body, "00081198"))
    assert reasons == [DOES_NOT_MATCH, CANNOT_UNDERSTAND]
    assert "00081199" not in body
    assert blobs(archive_config) == []
    assert staged(archive_config) == []


async def test_failures_carry_a_warning_header(client) -> None:
    body, ctype = multipart([b"garbage"])
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 409
    warnings = resp.headers.getall("Warning", [])
    assert warnings and all(w.startswith("299 ") for w in warnings)
    assert any("DICM" in w for w in warnings), warnings


# -- duplicates ---------------------------------------------------------------------------------


async def test_identical_restow_is_success_and_stores_once(client, archive_config) -> None:
    study = synth.uid()
    data = synth.instance(study=study)
    sop = dcmread(BytesIO(data)).SOPInstanceUID
    for _ in range(2):
        status, body = await stow(client, [data])
        assert status == 200, body
        assert [r["00081155"]["Value"][0] for r in values(body, "00081199")] == [sop]
    assert len(await qido(client, "/dicom-web/instances", SOPInstanceUID=sop)) == 1
    (found,) = await qido(client, "/dicom-web/studies", StudyInstanceUID=study)
    assert found["00201208"]["Value"] == [1]
    assert len(blobs(archive_config)) == 1
    assert staged(archive_config) == []


async def test_different_instance_under_stored_uid_is_rejected_by_default(client, archive_config) -> None:
    study, series, sop = synth.uid(), synth.uid(), synth.uid()
    first = synth.instance(study=study, series=series, sop=sop)
    second = synth.instance(study=study, series=series, sop=sop, fill=7)
    assert (await stow(client, [first]))[0] == 200
    before = blobs(archive_config)
    status, body = await stow(client, [second])
    assert status == 409, body
    (failed,) = values(body, "00081198")
    assert failed["00081197"]["Value"] == [DUPLICATE_SOP_INSTANCE]
    assert failed["00081155"]["Value"] == [sop]
    assert await retrieve_bytes(client, study, series, sop) == first
    assert blobs(archive_config) == before
    assert staged(archive_config) == []
    (found,) = await qido(client, "/dicom-web/studies", StudyInstanceUID=study)
    assert found["00201208"]["Value"] == [1]


@pytest.fixture
async def overwrite_client(aiohttp_client, tmp_path):
    cfg = make_config(tmp_path, ingest={"duplicate_policy": "overwrite"})
    return await aiohttp_client(create_app(cfg)), cfg


async def test_overwrite_policy_replaces_the_stored_instance(overwrite_client) -> None:
    client, cfg = overwrite_client
    study, series, sop = synth.uid(), synth.uid(), synth.uid()
    first = synth.instance(study=study, series=series, sop=sop, instance_number=1)
    neighbour = synth.instance(study=study, series=series, instance_number=2)
    second = synth.instance(study=study, series=series, sop=sop, instance_number=5, fill=7)
    assert (await stow(client, [first, neighbour]))[0] == 200
    before = set(blobs(cfg))
    assert len(before) == 2
    status, body = await stow(client, [second])
    assert status == 200, body
    assert [r["00081155"]["Value"][0] for r in values(body, "00081199")] == [sop]
    assert await retrieve_bytes(client, study, series, sop) == second
    # The old file is gone, the new one is there, the neighbour untouched.
    after = set(blobs(cfg))
    assert len(after) == 2
    assert len(after - before) == 1 and len(before - after) == 1
    assert sop in (before - after).pop().name
    assert staged(cfg) == []
    # Counts and stored metadata follow the new version.
    (found,) = await qido(client, "/dicom-web/studies", StudyInstanceUID=study)
    assert found["00201208"]["Value"] == [2]
    assert found["00201206"]["Value"] == [1]
    (ser,) = await qido(client, f"/dicom-web/studies/{study}/series")
    assert ser["00201209"]["Value"] == [2]
    assert len(await qido(client, "/dicom-web/instances", SOPInstanceUID=sop)) == 1
    resp = await client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata")
    (meta,) = await resp.json()
    assert meta["00200013"]["Value"] == [5]


async def test_overwrite_into_another_series_and_study_leaves_no_empty_ones(overwrite_client) -> None:
    client, cfg = overwrite_client
    sop = synth.uid()
    study_a, series_a = synth.uid(), synth.uid()
    series_b = synth.uid()
    study_c, series_c = synth.uid(), synth.uid()
    assert (await stow(client, [synth.instance(study=study_a, series=series_a, sop=sop)]))[0] == 200
    # Same study, another series: the emptied series disappears.
    assert (await stow(client, [synth.instance(study=study_a, series=series_b, sop=sop, fill=1)]))[0] == 200
    (found,) = await qido(client, "/dicom-web/studies", StudyInstanceUID=study_a)
    assert found["00201206"]["Value"] == [1]
    assert found["00201208"]["Value"] == [1]
    assert [s["0020000E"]["Value"][0] for s in await qido(client, f"/dicom-web/studies/{study_a}/series")] \
        == [series_b]
    # Another study: the emptied study disappears.
    assert (await stow(client, [synth.instance(study=study_c, series=series_c, sop=sop, fill=2)]))[0] == 200
    assert [s["0020000D"]["Value"][0] for s in await qido(client, "/dicom-web/studies")] == [study_c]
    resp = await client.get(f"/dicom-web/studies/{study_a}")
    assert resp.status == 404
    assert len(blobs(cfg)) == 1


async def test_same_uid_twice_in_one_request(client, archive_config) -> None:
    study, series, sop = synth.uid(), synth.uid(), synth.uid()
    data = synth.instance(study=study, series=series, sop=sop)
    status, body = await stow(client, [data, data])
    assert status == 200, body
    assert [r["00081155"]["Value"][0] for r in values(body, "00081199")] == [sop, sop]
    assert len(await qido(client, "/dicom-web/instances", SOPInstanceUID=sop)) == 1
    assert len(blobs(archive_config)) == 1

    sop2 = synth.uid()
    first = synth.instance(study=study, series=series, sop=sop2)
    status, body = await stow(client, [first, synth.instance(study=study, series=series, sop=sop2, fill=3)])
    assert status == 202, body
    assert [r["00081155"]["Value"][0] for r in values(body, "00081199")] == [sop2]
    (failed,) = values(body, "00081198")
    assert failed["00081197"]["Value"] == [DUPLICATE_SOP_INSTANCE]
    assert await retrieve_bytes(client, study, series, sop2) == first
    (found,) = await qido(client, "/dicom-web/studies", StudyInstanceUID=study)
    assert found["00201208"]["Value"] == [2]
    assert len(blobs(archive_config)) == 2
    assert staged(archive_config) == []


# -- staging ------------------------------------------------------------------------------------


async def test_no_staged_files_left_after_success_or_failure(client, archive_config) -> None:
    study = synth.uid()
    assert (await stow(client, [synth.instance(study=study)]))[0] == 200
    assert staged(archive_config) == []
    status, _ = await stow(client, [synth.instance(study=study), synth.instance(study=synth.uid()),
                                    b"\0" * 200, synth.instance(study=study)[:300]], study=study)
    assert status == 202
    assert staged(archive_config) == []
    assert (await stow(client, [b"junk"]))[0] == 409
    assert staged(archive_config) == []
    body, ctype = _truncated_in_second_part()
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 400
    assert staged(archive_config) == []
    # Exactly the indexed instances have a blob.
    assert len(blobs(archive_config)) == len(await qido(client, "/dicom-web/instances")) == 2


# -- size ---------------------------------------------------------------------------------------


async def test_40_mb_instance_round_trip(client, archive_config) -> None:
    study, series, sop = synth.uid(), synth.uid(), synth.uid()
    ds = synth.dataset(study=study, series=series, sop=sop, rows=4000, columns=5000)
    data = synth.encode(ds)
    assert len(data) > 40_000_000
    status, body = await stow(client, [data])
    assert status == 200, body
    assert await retrieve_bytes(client, study, series, sop) == data
    assert blobs(archive_config)[0].stat().st_size == len(data)
    # The pixel data comes back through its BulkDataURI too.
    resp = await client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata")
    (meta,) = await resp.json()
    uri = meta["7FE00010"]["BulkDataURI"]
    resp = await client.session.get(uri)
    assert resp.status == 200
    (value,) = split_multipart(await resp.read(), resp.headers["Content-Type"])
    assert value == ds.PixelData


async def test_client_going_away_mid_upload_leaves_nothing(client, archive_config) -> None:
    """The connection drops in the second part: the complete first part is not kept either."""
    body, ctype = multipart([synth.instance(rows=256, columns=256), synth.instance(rows=256, columns=256)])
    reader, writer = await asyncio.open_connection(client.host, client.port)
    head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: {client.host}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    writer.write(head.encode() + body[:len(body) * 3 // 4])
    await writer.drain()
    await asyncio.sleep(0.3)  # let the server receive and process the first part
    writer.close()
    await writer.wait_closed()
    for _ in range(50):
        await asyncio.sleep(0.05)
        if not blobs(archive_config) and not staged(archive_config):
            break
    assert blobs(archive_config) == []
    assert staged(archive_config) == []
    assert await qido(client, "/dicom-web/instances") == []


async def test_empty_part_is_a_failure_entry_not_an_error(client) -> None:
    """A zero-length part gets 0xC000 with a reason; the other parts are stored."""
    good = storable()[0].path.read_bytes()
    body, ctype = multipart([b"", good])
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 202
    doc = await resp.json()
    assert [f["00081197"]["Value"][0] for f in doc["00081198"]["Value"]] == [0xC000]
    assert len(doc["00081199"]["Value"]) == 1
    assert any("empty part" in w for w in resp.headers.getall("Warning", []))
