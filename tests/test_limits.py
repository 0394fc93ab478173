"""Limits (issue 5): request size (413), instance size (0xA700), concurrent requests (503 with
Retry-After, /healthz exempt), QIDO-RS query time (503, the SQL statement interrupted) and result
count (Warning) — each a clear answer, never a crash or a runaway query."""

from __future__ import annotations

import asyncio
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import text

from archive import keys
from archive.app import create_app
from archive.config import ConfigError, from_dict
from archive.query import run
from tests import synth
from tests.conftest import make_config, multipart

OUT_OF_RESOURCES = 0xA700


async def make_client(aiohttp_client, tmp_path: Path, **sections: dict[str, Any]):
    cfg = make_config(tmp_path, **sections)
    client = await aiohttp_client(create_app(cfg))
    client.archive_config = cfg
    return client


async def instances(client) -> list[dict[str, Any]]:
    resp = await client.get("/dicom-web/instances")
    assert resp.status == 200
    return await resp.json()


def leftovers(client) -> list[Path]:
    root = client.archive_config.storage_path
    return [p for p in root.rglob("*") if p.is_file()]


def sop_of(data: bytes) -> str:
    return str(dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


# -- request and instance size ------------------------------------------------------------------


async def test_request_larger_than_max_request_size_is_413(aiohttp_client, tmp_path: Path) -> None:
    client = await make_client(aiohttp_client, tmp_path, http={"max_request_size": 100_000})
    small = synth.instance()
    body, ctype = multipart([small])
    assert (await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})).status == 200
    # Content-Length says it: refused before reading.
    body, ctype = multipart([synth.instance(rows=256, columns=256)])
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 413
    assert "100000 bytes" in await resp.text()
    # A chunked body (no Content-Length): cut when it passes the limit.

    async def chunked() -> Any:
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    resp = await client.post("/dicom-web/studies", data=chunked(), headers={"Content-Type": ctype})
    assert resp.status == 413
    assert "max_request_size" in await resp.text()
    assert [d["00080018"]["Value"][0] for d in await instances(client)] == [sop_of(small)]
    assert len(leftovers(client)) == 1  # the small instance's blob; nothing staged


async def test_instance_larger_than_max_instance_size_fails_with_a700(aiohttp_client, tmp_path: Path) -> None:
    client = await make_client(aiohttp_client, tmp_path, ingest={"max_instance_size": 100_000})
    small, big = synth.instance(), synth.instance(rows=256, columns=256)
    body, ctype = multipart([big, small])
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 202
    doc = await resp.json()
    assert [f["00081197"]["Value"][0] for f in doc["00081198"]["Value"]] == [OUT_OF_RESOURCES]
    assert any("maximum of 100000 bytes" in w for w in resp.headers.getall("Warning"))
    assert [d["00080018"]["Value"][0] for d in await instances(client)] == [sop_of(small)]
    assert len(leftovers(client)) == 1


# -- concurrent requests ------------------------------------------------------------------------


async def test_requests_beyond_max_concurrent_requests_get_503(aiohttp_client, tmp_path: Path) -> None:
    client = await make_client(aiohttp_client, tmp_path, http={"max_concurrent_requests": 2})
    body, ctype = multipart([synth.instance()])
    writers = []
    for _ in range(2):  # two uploads in progress: their bodies are half sent
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write((f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
                     + body[:len(body) // 2])
        await writer.drain()
        writers.append((reader, writer))
    for _ in range(100):
        if (await client.get("/healthz")).status == 200 and \
                (resp := await client.get("/dicom-web/studies")).status == 503:
            break
        await asyncio.sleep(0.02)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert "too many requests" in await resp.text()
    assert (await client.get("/healthz")).status == 200  # exempt
    for reader, writer in writers:
        writer.write(body[len(body) // 2:])
        await writer.drain()
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
    assert (await client.get("/dicom-web/studies")).status == 200


# -- QIDO-RS ------------------------------------------------------------------------------------


@pytest.mark.databases
async def test_runaway_query_is_interrupted_with_503(aiohttp_client, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A query that would never end (an unbounded recursive CTE stands in for a pathological
    search) is interrupted in SQLite after [qido] timeout; its connection goes back to the pool
    usable, and the next query answers."""
    client = await make_client(aiohttp_client, tmp_path, qido={"timeout": 0.3})
    body, ctype = multipart([synth.instance()])
    assert (await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})).status == 200
    real = run.build_select
    endless = text("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                   "SELECT count(*) FROM c")
    monkeypatch.setattr(run, "build_select", lambda query, limit: endless)
    t0 = time.monotonic()
    resp = await client.get("/dicom-web/studies")
    assert resp.status == 503
    assert time.monotonic() - t0 < 2.5
    assert "longer than the server's limit of 0.3 s" in await resp.text()
    engine = client.app[keys.ENGINE]
    assert engine.pool.checkedout() == 0
    monkeypatch.setattr(run, "build_select", real)
    resp = await client.get("/dicom-web/studies")
    assert resp.status == 200
    assert len(await resp.json()) == 1


@pytest.mark.databases
async def test_huge_limit_stays_bounded_by_max_results(aiohttp_client, tmp_path: Path) -> None:
    client = await make_client(aiohttp_client, tmp_path, qido={"max_results": 3})
    body, ctype = multipart([synth.instance() for _ in range(5)])
    assert (await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})).status == 200
    for limit in ("1000000000", str(10 ** 30)):
        resp = await client.get("/dicom-web/studies", params={"limit": limit})
        assert resp.status in (200, 400), await resp.text()
        if resp.status == 200:
            assert len(await resp.json()) == 3
            assert "exceeded the maximum" in resp.headers["Warning"]
    resp = await client.get("/dicom-web/studies", params={"limit": "2"})
    assert len(await resp.json()) == 2 and "Warning" not in resp.headers


# -- configuration ------------------------------------------------------------------------------


def test_limit_keys_defaults_and_validation() -> None:
    cfg = from_dict({})
    assert (cfg.http.max_request_size, cfg.http.max_concurrent_requests, cfg.http.shutdown_timeout,
            cfg.ingest.max_instance_size, cfg.qido.timeout) == (0, 0, 30, 0, 30.0)
    assert from_dict({"qido": {"timeout": 2}}).qido.timeout == 2.0
    for bad in ({"http": {"max_request_size": -1}}, {"http": {"max_concurrent_requests": -5}},
                {"http": {"shutdown_timeout": -1}}, {"http": {"shutdown_timeout": 1.5}},
                {"ingest": {"max_instance_size": -1}}, {"qido": {"timeout": -0.5}},
                {"qido": {"timeout": "10"}}, {"qido": {"timeout": True}}):
        with pytest.raises(ConfigError):
            from_dict(bad)


@pytest.mark.databases
async def test_runaway_c_find_is_interrupted_with_a700(aiohttp_client, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """C-FIND goes through the same search and the same [qido] timeout: an endless query is
    interrupted and answered 0xA700 (Refused: Out of Resources, PS3.4 Table C.4-1)."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    from tests.conftest import free_port

    port = free_port()
    client = await make_client(aiohttp_client, tmp_path, qido={"timeout": 0.3},
                               dimse={"enabled": True, "port": port})
    body, ctype = multipart([synth.instance()])
    assert (await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})).status == 200
    endless = text("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                   "SELECT count(*) FROM c")
    real = run.build_select

    def find() -> list[int]:
        ae = AE(ae_title="FINDSCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", port, ae_title="IMAGING-ARCHIVE")
        assert assoc.is_established
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = ""
        try:
            return [int(s.Status) for s, _ in
                    assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind) if s]
        finally:
            assoc.release()

    monkeypatch.setattr(run, "build_select", lambda query, limit: endless)
    t0 = time.monotonic()
    assert await asyncio.to_thread(find) == [0xA700]
    assert time.monotonic() - t0 < 5
    monkeypatch.setattr(run, "build_select", real)
    assert await asyncio.to_thread(find) == [0xFF00, 0x0000]  # one match, then success


@pytest.mark.databases
async def test_runaway_cohort_query_is_interrupted_with_503(aiohttp_client, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Cohort queries share QIDO-RS's deadline ([qido] timeout): the same endless statement stands
    in for a cohort too heavy for the index."""
    from archive.cohorts import query as cohort_query

    client = await make_client(aiohttp_client, tmp_path, qido={"timeout": 0.3})
    body, ctype = multipart([synth.instance()])
    assert (await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})).status == 200
    endless = text("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c")
    real = cohort_query._statistics_statement
    monkeypatch.setattr(cohort_query, "_statistics_statement", lambda *args: endless)
    t0 = time.monotonic()
    resp = await client.post("/api/cohorts/query", json={"filters": {}})
    assert resp.status == 503 and time.monotonic() - t0 < 2.5
    assert "[qido] timeout" in (await resp.json())["error"]
    assert client.app[keys.ENGINE].pool.checkedout() == 0
    monkeypatch.setattr(cohort_query, "_statistics_statement", real)
    resp = await client.post("/api/cohorts/query", json={"filters": {}})
    assert resp.status == 200 and (await resp.json())["counts"]["studies"] == 1
