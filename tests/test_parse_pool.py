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


def _outcomes(body: dict) -> tuple[list[str], list[tuple[int, str]]]:
    stored = sorted(i["00081155"]["Value"][0] for i in body.get("00081199", {}).get("Value", []))
    failed = sorted((i["00081197"]["Value"][0], i.get("00081155", {}).get("Value", [""])[0])
                    for i in body.get("00081198", {}).get("Value", []))
    return stored, failed


async def test_batched_parsing_gives_each_part_its_own_outcome(aiohttp_client, tmp_path) -> None:
    """Files are handed to the parse worker in batches (archive.ingest._parse); a bad file in a
    batch fails alone, with the reason the in-thread parser gives it, and its neighbours are
    stored: one request of good and bad files interleaved answers the same either way."""
    from tests import badfiles, synth

    goods = [synth.dataset() for _ in range(60)]  # more than a batch: several calls
    bad = badfiles.corpus(include_bomb=False)
    parts: list[bytes] = []
    for i, good in enumerate(goods):
        parts.append(synth.encode(good))
        if i < len(bad):
            parts.append(bad[i].data)
    body, ctype = multipart(parts)
    answers = []
    for processes in (1, 0):
        cfg = make_config(tmp_path / f"p{processes}", ingest={"parse_processes": processes})
        app = create_app(cfg)
        client = await aiohttp_client(app)
        assert (app[keys.INGEST]._pool is None) == (processes == 0)
        resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
        assert resp.status == 202
        answers.append(_outcomes(await resp.json()))
    pooled, threaded = answers
    assert pooled == threaded
    assert pooled[0] == sorted(str(g.SOPInstanceUID) for g in goods)
    assert len(pooled[1]) == min(len(bad), len(goods))


async def test_a_worker_dead_under_a_batch_fails_none_of_its_files(aiohttp_client, tmp_path) -> None:
    """The worker dies before a batch of a many-part request is parsed: the pool is restarted
    and every file of the batch parsed again on its own; none is refused."""
    from tests import synth

    cfg = make_config(tmp_path, ingest={"parse_processes": 1})
    app = create_app(cfg)
    client = await aiohttp_client(app)
    assert await _stow(client, synth.instance()) == 200  # the worker is up
    pool = app[keys.INGEST]._pool
    for pid in list(pool._processes):
        os.kill(pid, signal.SIGKILL)
    goods = [synth.dataset() for _ in range(40)]
    body, ctype = multipart([synth.encode(g) for g in goods])
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 200, await resp.text()
    stored, failed = _outcomes(await resp.json())
    assert stored == sorted(str(g.SOPInstanceUID) for g in goods) and failed == []
    assert app[keys.INGEST]._pool is not pool
