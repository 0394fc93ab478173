"""Parsing runs in a worker process; a worker that dies is replaced and ingest goes on."""

from __future__ import annotations

import os
import signal

from pydicom import dcmread

from archive import keys
from archive.app import create_app
from tests.conftest import make_config, multipart
from tests.samples import storable


async def _stow(client, data: bytes) -> int:
    body, ctype = multipart([data])
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    return resp.status


async def test_dead_parse_worker_is_replaced(aiohttp_client, tmp_path) -> None:
    cfg = make_config(tmp_path, ingest={"parse_processes": 1})
    app = create_app(cfg)
    client = await aiohttp_client(app)
    by_uid = {dcmread(s.path, stop_before_pixels=True).SOPInstanceUID: s for s in storable()}
    samples = list(by_uid.values())[:2]
    assert await _stow(client, samples[0].path.read_bytes()) == 200
    pool = app[keys.INGEST]._pool
    pids = list(pool._processes)  # the pool's worker processes
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert await _stow(client, samples[1].path.read_bytes()) == 200
    assert app[keys.INGEST]._pool is not pool
    resp = await client.get("/dicom-web/instances")
    assert len(await resp.json()) == 2


async def test_threads_only_when_configured(aiohttp_client, tmp_path) -> None:
    cfg = make_config(tmp_path, ingest={"parse_processes": 0})
    app = create_app(cfg)
    client = await aiohttp_client(app)
    assert app[keys.INGEST]._pool is None
    assert await _stow(client, storable()[0].path.read_bytes()) == 200
