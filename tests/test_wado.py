"""WADO-RS (PS3.18 §10.4): instances, metadata and bulk data; content negotiation; CORS."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from io import BytesIO

import pytest
from pydicom import dcmread
from yarl import URL

from archive.app import create_app
from tests import synth
from tests.conftest import make_config, multipart
from tests.test_roundtrip import parse_multipart

# Run on SQLite and on PostgreSQL (tests/pg.py).
pytestmark = pytest.mark.databases

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
DICOM_ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Stored:
    study: str
    series: list[str]
    files: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> file
    series_of: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> series

    def in_series(self, series: str) -> dict[str, bytes]:
        return {sop: data for sop, data in self.files.items() if self.series_of[sop] == series}


async def _store(client, with_bulk: bool = True) -> Stored:
    """One study: two instances in series 1, one in series 2 (32x32 16-bit: PixelData is bulk)."""
    study = synth.uid()
    stored = Stored(study, [synth.uid(), synth.uid()])
    size = 32 if with_bulk else 8
    for n, series in enumerate([stored.series[0], stored.series[0], stored.series[1]], start=1):
        ds = synth.dataset(study=study, series=series, rows=size, columns=size, instance_number=n)
        ds.SeriesNumber = 1 if series == stored.series[0] else 2
        data = synth.encode(ds)
        stored.files[ds.SOPInstanceUID] = data
        stored.series_of[ds.SOPInstanceUID] = series
    body, ctype = multipart(list(stored.files.values()))
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 200, await resp.text()
    return stored


@pytest.fixture
async def stored(client) -> Stored:
    return await _store(client)


def _by_sop(parts: list[tuple[dict[str, str], bytes]]) -> dict[str, bytes]:
    return {dcmread(BytesIO(data)).SOPInstanceUID: data for _, data in parts}


# -- instances ----------------------------------------------------------------------------------


async def test_retrieve_study_series_instance_byte_identical(client, stored: Stored) -> None:
    base = f"/dicom-web/studies/{stored.study}"
    first_series = stored.series[0]
    one_sop = next(iter(stored.in_series(stored.series[1])))
    cases = [
        (base, stored.files),
        (f"{base}/series/{first_series}", stored.in_series(first_series)),
        (f"{base}/series/{stored.series[1]}/instances/{one_sop}", {one_sop: stored.files[one_sop]}),
    ]
    for path, expected in cases:
        resp = await client.get(path, headers={"Accept": DICOM_ANY_TS})
        assert resp.status == 200, path
        ctype = resp.headers["Content-Type"]
        assert ctype.startswith("multipart/related") and 'type="application/dicom"' in ctype
        parts = parse_multipart(await resp.read(), ctype)
        assert len(parts) == len(expected), path
        assert _by_sop(parts) == expected, path
        for headers, data in parts:
            # (the stdlib parser re-serializes the header with the parameter quoted)
            assert headers["Content-Type"].replace('"', "") == \
                f"application/dicom; transfer-syntax={EXPLICIT_LE}"
            assert int(headers["Content-Length"]) == len(data)
    # Instances come in series, then instance number order.
    resp = await client.get(base)
    sops = [dcmread(BytesIO(d)).SOPInstanceUID for _, d in
            parse_multipart(await resp.read(), resp.headers["Content-Type"])]
    assert sops == list(stored.files)


@pytest.mark.parametrize("accept", [
    None,
    "*/*",
    "multipart/related",
    'multipart/related; type="application/dicom"',
    "multipart/related; type=application/dicom",
    DICOM_ANY_TS,
    f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}',
    f'multipart/related; type="application/dicom"; transfer-syntax="{EXPLICIT_LE}"',
    "application/dicom",
    "multipart/*",
    "image/jpeg, */*;q=0.1",
    # The first choice cannot be served; a later one can.
    f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}, '
    f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE};q=0.9',
    f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}, {DICOM_ANY_TS};q=0.5',
])
async def test_acceptable_media_types(client, stored: Stored, accept: str | None) -> None:
    sop, data = next(iter(stored.files.items()))
    path = f"/dicom-web/studies/{stored.study}/series/{stored.series_of[sop]}/instances/{sop}"
    resp = await client.get(path, headers={"Accept": accept} if accept else {})
    assert resp.status == 200, await resp.text()
    ((_, back),) = parse_multipart(await resp.read(), resp.headers["Content-Type"])
    assert back == data


@pytest.mark.parametrize("accept", [
    f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}',
    f"application/dicom; transfer-syntax={JPEG_BASELINE}",
    "image/jpeg",
    'multipart/related; type="application/octet-stream"',
    'multipart/related; type="image/jpeg"',
    "application/dicom+json",
    "*/*;q=0",
])
async def test_unacceptable_media_types_are_406(client, stored: Stored, accept: str) -> None:
    for path in (f"/dicom-web/studies/{stored.study}",
                 f"/dicom-web/studies/{stored.study}/series/{stored.series[0]}"):
        resp = await client.get(path, headers={"Accept": accept})
        assert resp.status == 406, (path, accept)


async def test_unknown_uids_are_404(client, stored: Stored) -> None:
    study, series = stored.study, stored.series[0]
    unknown = "1.2.3.4.5.6.7.8.9"
    for path in (f"/studies/{unknown}",
                 f"/studies/{unknown}/series/{series}",
                 f"/studies/{study}/series/{unknown}",
                 f"/studies/{study}/series/{series}/instances/{unknown}",
                 f"/studies/{study}/series/{stored.series[1]}/instances/{next(iter(stored.files))}",
                 f"/studies/{unknown}/metadata",
                 f"/studies/{study}/series/{unknown}/metadata",
                 f"/studies/{study}/series/{series}/instances/{unknown}/metadata"):
        resp = await client.get("/dicom-web" + path)
        assert resp.status == 404, path


BAD_UIDS = ["1.2.abc", "abc", "1.2..3", "%2E%2E", "1." + "2" * 64, "1.02.3", "01.2.3", "1.2.3.", "1",
            "1.2.3%0A"]


@pytest.mark.parametrize("bad", BAD_UIDS)
async def test_malformed_uids_are_400_at_each_level(client, stored: Stored, bad: str) -> None:
    study, series = stored.study, stored.series[0]
    sop = next(iter(stored.in_series(series)))
    for path in (f"/studies/{bad}",
                 f"/studies/{bad}/series/{series}",
                 f"/studies/{study}/series/{bad}",
                 f"/studies/{study}/series/{series}/instances/{bad}",
                 f"/studies/{bad}/series/{series}/instances/{sop}",
                 f"/studies/{bad}/metadata",
                 f"/studies/{study}/series/{bad}/metadata",
                 f"/studies/{study}/series/{series}/instances/{bad}/metadata",
                 f"/studies/{study}/series/{series}/instances/{bad}/bulk/7FE00010"):
        resp = await client.get(URL("/dicom-web" + path, encoded=True))
        assert resp.status == 400, path


# -- metadata and bulk data ---------------------------------------------------------------------


async def test_metadata_at_each_level(client, stored: Stored) -> None:
    base = f"/dicom-web/studies/{stored.study}"
    sop = next(iter(stored.in_series(stored.series[1])))
    cases = [
        (f"{base}/metadata", list(stored.files)),
        (f"{base}/series/{stored.series[0]}/metadata", list(stored.in_series(stored.series[0]))),
        (f"{base}/series/{stored.series[1]}/instances/{sop}/metadata", [sop]),
    ]
    for path, sops in cases:
        resp = await client.get(path, headers={"Accept": "application/dicom+json"})
        assert resp.status == 200, path
        assert resp.headers["Content-Type"].startswith("application/dicom+json")
        items = await resp.json()
        assert [i["00080018"]["Value"][0] for i in items] == sops, path
        for item in items:
            assert item["0020000D"]["Value"] == [stored.study]
            assert item["0020000E"]["Value"] == [stored.series_of[item["00080018"]["Value"][0]]]
            assert not any(tag.startswith("0002") for tag in item)  # no File Meta
    resp = await client.get(f"{base}/metadata", headers={"Accept": "image/jpeg"})
    assert resp.status == 406


async def test_bulk_data_uris_are_absolute_and_retrievable(client, stored: Stored) -> None:
    resp = await client.get(f"/dicom-web/studies/{stored.study}/metadata")
    items = await resp.json()
    root = str(client.make_url("/dicom-web"))
    assert root.startswith("http://127.0.0.1:")
    for item in items:
        sop = item["00080018"]["Value"][0]
        uri = item["7FE00010"]["BulkDataURI"]
        series = stored.series_of[sop]
        assert uri == f"{root}/studies/{stored.study}/series/{series}/instances/{sop}/bulk/7FE00010"
        resp = await client.session.get(uri)  # the URI as given, not rebuilt
        assert resp.status == 200
        ctype = resp.headers["Content-Type"]
        assert 'type="application/octet-stream"' in ctype
        ((headers, value),) = parse_multipart(await resp.read(), ctype)
        assert headers["Content-Type"] == "application/octet-stream"
        assert value == dcmread(BytesIO(stored.files[sop])).PixelData


async def test_bulk_data_errors(client, stored: Stored) -> None:
    sop = next(iter(stored.in_series(stored.series[0])))
    base = f"/dicom-web/studies/{stored.study}/series/{stored.series[0]}/instances/{sop}/bulk"
    for tag in ("00100010", "7FE00011", "00091010", "7FE00010/0/00100010"):
        resp = await client.get(f"{base}/{tag}")
        assert resp.status == 404, tag
    resp = await client.get(f"/dicom-web/studies/{stored.study}/series/{stored.series[0]}"
                            f"/instances/1.2.3.4/bulk/7FE00010")
    assert resp.status == 404
    resp = await client.get(URL(f"{base}/7FE0%2C0010", encoded=True))
    assert resp.status == 400
    resp = await client.get(f"{base}/7FE00010", headers={"Accept": "image/jpeg"})
    assert resp.status == 406


async def test_large_metadata_is_streamed_as_one_json_array(aiohttp_client, tmp_path) -> None:
    """Over 1 MB the metadata response is streamed; it must still be one valid JSON array."""
    client = await aiohttp_client(create_app(make_config(
        tmp_path, ingest={"bulk_data_threshold": 1 << 22}, http={"cors_origins": ["*"]})))
    study, series = synth.uid(), synth.uid()
    datasets = [synth.dataset(study=study, series=series, rows=512, columns=512, instance_number=n)
                for n in range(1, 4)]
    body, ctype = multipart([synth.encode(ds) for ds in datasets])
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 200
    resp = await client.get(f"/dicom-web/studies/{study}/metadata", headers={"Origin": "http://x.example"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/dicom+json"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    raw = await resp.read()
    assert len(raw) > 2 << 20
    items = json.loads(raw)
    assert [i["00080018"]["Value"][0] for i in items] == [ds.SOPInstanceUID for ds in datasets]
    for item, ds in zip(items, datasets, strict=True):
        assert base64.b64decode(item["7FE00010"]["InlineBinary"]) == ds.PixelData


async def test_base_url_setting_rewrites_uris(aiohttp_client, tmp_path) -> None:
    client = await aiohttp_client(create_app(make_config(
        tmp_path, http={"base_url": "https://archive.example/dicom-web/"})))
    stored = await _store(client)
    resp = await client.get(f"/dicom-web/studies/{stored.study}/metadata")
    for item in await resp.json():
        assert item["7FE00010"]["BulkDataURI"].startswith(
            f"https://archive.example/dicom-web/studies/{stored.study}/series/")


# -- CORS and health ----------------------------------------------------------------------------

VIEWER = "http://viewer.example"


async def _cors_client(aiohttp_client, tmp_path, origins: list[str] | None):
    sections = {"http": {"cors_origins": origins}} if origins is not None else {}
    return await aiohttp_client(create_app(make_config(tmp_path, **sections)))


async def _get_everything(client, stored: Stored, origin: str) -> list[tuple[str, int, str | None]]:
    """Each kind of response (JSON, streamed multipart, error) as (path, status, Allow-Origin)."""
    sop = next(iter(stored.in_series(stored.series[0])))
    instance = f"/dicom-web/studies/{stored.study}/series/{stored.series[0]}/instances/{sop}"
    out = []
    for path in ("/dicom-web/studies", f"{instance}/metadata", instance, f"{instance}/bulk/7FE00010",
                 "/dicom-web/studies/1.2.3.4", "/dicom-web/studies/x", "/healthz"):
        resp = await client.get(path, headers={"Origin": origin})
        await resp.read()
        out.append((path, resp.status, resp.headers.get("Access-Control-Allow-Origin")))
    return out


async def test_cors_preflight_and_responses_for_a_listed_origin(aiohttp_client, tmp_path) -> None:
    client = await _cors_client(aiohttp_client, tmp_path, [VIEWER])
    stored = await _store(client)
    resp = await client.options(f"/dicom-web/studies/{stored.study}/metadata", headers={
        "Origin": VIEWER, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "accept, authorization"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == VIEWER
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"accept", "authorization"} <= allowed
    methods = {m.strip() for m in resp.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST"} <= methods
    # Preflight of a STOW-RS request.
    resp = await client.options("/dicom-web/studies", headers={
        "Origin": VIEWER, "Access-Control-Request-Method": "POST"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == VIEWER
    # Every actual response carries the header, streamed ones and errors too.
    results = await _get_everything(client, stored, VIEWER)
    assert [status for _, status, _ in results] == [200, 200, 200, 200, 404, 400, 200]
    assert [(path, origin) for path, _, origin in results] == [(path, VIEWER) for path, _, _ in results]
    # And a STOW-RS response.
    body, ctype = multipart([synth.instance()])
    resp = await client.post("/dicom-web/studies", data=body,
                             headers={"Content-Type": ctype, "Origin": VIEWER})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "Warning" in resp.headers["Access-Control-Expose-Headers"]


async def test_cors_origin_not_listed_gets_no_headers(aiohttp_client, tmp_path) -> None:
    client = await _cors_client(aiohttp_client, tmp_path, [VIEWER])
    stored = await _store(client)
    other = "http://evil.example"
    resp = await client.options("/dicom-web/studies", headers={
        "Origin": other, "Access-Control-Request-Method": "GET"})
    assert resp.status != 204
    assert "Access-Control-Allow-Origin" not in resp.headers
    results = await _get_everything(client, stored, other)
    assert [origin for _, _, origin in results] == [None] * len(results)
    # Without an Origin header (not a cross-origin request) there is none either.
    resp = await client.get("/dicom-web/studies")
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_cors_wildcard_allows_any_origin(aiohttp_client, tmp_path) -> None:
    client = await _cors_client(aiohttp_client, tmp_path, ["*"])
    stored = await _store(client)
    resp = await client.options("/dicom-web/studies", headers={
        "Origin": "http://anything.example", "Access-Control-Request-Method": "GET"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    results = await _get_everything(client, stored, "http://anything.example")
    assert [origin for _, _, origin in results] == ["*"] * len(results)


async def test_no_cors_by_default(aiohttp_client, tmp_path) -> None:
    client = await _cors_client(aiohttp_client, tmp_path, None)
    stored = await _store(client)
    resp = await client.options("/dicom-web/studies", headers={
        "Origin": VIEWER, "Access-Control-Request-Method": "GET"})
    assert resp.status != 204
    assert not any(h.lower().startswith("access-control-") for h in resp.headers)
    results = await _get_everything(client, stored, VIEWER)
    assert [origin for _, _, origin in results] == [None] * len(results)


async def test_healthz(client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.text() == "ok"
