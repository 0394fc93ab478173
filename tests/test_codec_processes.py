"""Codec work in worker processes (``[render] codec_processes``): decoded frames and transcoded
retrieves give the same bytes as in threads, and the workers start only when a codec is needed."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from archive import keys
from archive.app import create_app
from tests import synth
from tests.conftest import make_config, multipart
from tests.test_frames import _encapsulated, _rle_frames, _stow
from tests.test_roundtrip import parse_multipart

OCTET_ELE = f"multipart/related; type=application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
DICOM_ELE = f'multipart/related; type="application/dicom"; transfer-syntax={ExplicitVRLittleEndian}'


@pytest.fixture
async def pooled(aiohttp_client, tmp_path):
    app = create_app(make_config(tmp_path, render={"codec_processes": 2}))
    return await aiohttp_client(app)


def _rle_instance() -> tuple[bytes, np.ndarray, str]:
    ds = synth.dataset(rows=64, columns=48, frames=3)
    arr = np.frombuffer(ds.PixelData, "<u2").reshape(3, 64, 48)
    ds.compress(RLELossless, arr)
    data = synth.encode(ds)
    url = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    return data, arr, url


async def test_frames_and_transcoding_run_in_worker_processes(pooled) -> None:
    pool = pooled.app[keys.CODECS]
    assert pool.processes == 2
    data, arr, url = _rle_instance()
    body, ctype = multipart([data])
    assert (await pooled.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})).status == 200
    assert not pool._pool._processes  # storing needs no codec: no worker started

    resp = await pooled.get(f"{url}/frames/3,1", headers={"Accept": OCTET_ELE})
    assert resp.status == 200, await resp.text()
    frames = parse_multipart(await resp.read(), resp.headers["Content-Type"])
    assert [f for _, f in frames] == [arr[2].tobytes(), arr[0].tobytes()]
    assert pool._pool._processes  # the decode ran in a worker

    resp = await pooled.get(url, headers={"Accept": DICOM_ELE})
    assert resp.status == 200, await resp.text()
    ((headers, part),) = parse_multipart(await resp.read(), resp.headers["Content-Type"])
    assert ExplicitVRLittleEndian in headers["Content-Type"]
    ds = dcmread(BytesIO(part))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(ds.pixel_array, arr)


async def test_undecodable_frame_in_a_worker_is_a_clear_406(pooled) -> None:
    """A codec error raised in a worker process comes back as the same clear 406."""
    encoded, _ = _rle_frames(2)
    damaged = b"\x01\x00\x00\x00\x40\x00\x00\x00" + b"\0" * 56 + b"\x7f\x01"  # 1 segment, 2 bytes
    url = await _stow(pooled, synth.encode(_encapsulated([damaged, encoded[1]])))
    resp = await pooled.get(f"{url}/frames/1", headers={"Accept": OCTET_ELE})
    assert resp.status == 406
    assert "frame 1 cannot be decoded" in await resp.text()
    resp = await pooled.get(f"{url}/frames/2", headers={"Accept": OCTET_ELE})
    assert resp.status == 200  # the pool survives a failed call


async def test_rendered_in_a_worker_matches_rendered_in_threads(pooled, client) -> None:
    ds = synth.dataset(rows=40, columns=30)
    data = synth.encode(ds)
    url = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}/rendered?window=100,300")
    images = []
    for c in (pooled, client):  # client: codec_processes = 0 (tests/conftest.py)
        body, ctype = multipart([data])
        assert (await c.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})).status == 200
        resp = await c.get(url, headers={"Accept": "image/png"})
        assert resp.status == 200, await resp.text()
        images.append(await resp.read())
    assert pooled.app[keys.CODECS]._pool._processes  # rendered in a worker
    assert images[0] == images[1]
    bad = await pooled.get(url.replace("window=100,300", "viewport=10,10,500,500,20,20"),
                           headers={"Accept": "image/png"})
    assert bad.status == 400  # a RenderError raised in the worker keeps its kind
