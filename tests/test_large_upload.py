"""A 2 GB STOW-RS request is streamed to disk, and the same study streamed out again as a zip
and as single frames: the server's memory stays flat."""

from __future__ import annotations

import threading
import uuid
import zipfile
from collections.abc import Iterator
from io import BytesIO

import psutil
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROWS, COLS, FRAMES = 4096, 4096, 16  # 512 MiB of 16-bit pixels per instance
PIXEL_BYTES = ROWS * COLS * FRAMES * 2


def _header(study: str, series: str) -> bytes:
    """Part 10 bytes up to and including the PixelData element header (value follows)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.Modality = "BIG", "Big^Upload", "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLS, FRAMES
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    # (7FE0,0010) OW, reserved, 32-bit length
    return buf.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + PIXEL_BYTES.to_bytes(4, "little")


def _body(boundary: str, n: int, study: str) -> Iterator[bytes]:
    series = generate_uid()
    block = bytes(range(256)) * 4096  # 1 MiB
    for _ in range(n):
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield _header(study, series)
        for _ in range(PIXEL_BYTES // len(block)):
            yield block
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


class _PeakRss(threading.Thread):
    """Samples a process's RSS every 20 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)


def test_two_gigabyte_request_keeps_memory_flat(live_server, tmp_path) -> None:
    requests.get(live_server.url + "/dicom-web/studies", timeout=10)  # warm up
    before = psutil.Process(live_server.proc.pid).memory_info().rss
    sampler = _PeakRss(live_server.proc.pid)
    sampler.start()
    boundary = uuid.uuid4().hex
    study = generate_uid()
    resp = requests.post(live_server.url + "/dicom-web/studies", data=_body(boundary, 4, study),
                         headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                                  f"boundary={boundary}"}, timeout=600)
    sampler.done.set()
    sampler.join()
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["00081199"]["Value"]) == 4
    growth_mb = (sampler.peak - before) / 2**20
    print(f"server RSS peak growth during the 2 GB request: {growth_mb:.1f} MB")
    assert growth_mb < 50, f"server RSS peaked {growth_mb:.0f} MB above its idle size"
    files = list((live_server.root / "files" / "data").rglob("*.dcm"))
    assert len(files) == 4 and all(f.stat().st_size > PIXEL_BYTES for f in files)

    # Out again: the whole study as one zip download (entries stored, CRCs computed on the way).
    sampler = _PeakRss(live_server.proc.pid)
    sampler.start()
    download = tmp_path / "study.zip"
    with requests.get(f"{live_server.url}/dicom-web/studies/{study}", stream=True, timeout=600,
                      headers={"Accept": "application/zip"}) as r, download.open("wb") as out:
        assert r.status_code == 200
        for chunk in r.iter_content(1 << 20):
            out.write(chunk)
    sampler.done.set()
    sampler.join()
    with zipfile.ZipFile(download) as zf:
        assert len(zf.namelist()) == 4
        assert all(i.file_size > PIXEL_BYTES for i in zf.infolist())
        assert zf.testzip() is None  # every CRC right
    growth_mb = (sampler.peak - before) / 2**20
    print(f"server RSS peak growth during the 2 GB zip download: {growth_mb:.1f} MB")
    assert growth_mb < 50, f"server RSS peaked {growth_mb:.0f} MB above its idle size"
