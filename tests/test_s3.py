"""The S3 backend (storage/s3.py) against a real S3 endpoint, moto in server mode on 127.0.0.1
(tests/s3server.py): the store's own guarantees (multipart commit, ranged reads, clean-up of
dead processes' uploads, errors), then real server processes on ``[storage] backend = "s3"``:
a 200 MB instance in and out with flat memory, real multi-vendor samples answered exactly as a
filesystem archive answers them, metadata served with S3 down, and the durability rule when S3
fails. The store contract both backends share is tests/test_storage.py."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from botocore.exceptions import ClientError
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from archive import config
from storage.base import StorageError, StorageFullError
from storage.s3 import MULTIPART_THRESHOLD, PART_SIZE, BlobNotFoundError, S3Store, _s3_error
from tests import synth
from tests.conftest import LiveServer, free_port, multipart
from tests.s3server import ACCESS_KEY, REGION, SECRET_KEY, MotoS3, delete_bucket, moto_s3  # noqa: F401
from tests.samples import storable
from tests.test_large_upload import _PeakRss as PeakRss

ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES_AS_STORED = "multipart/related; type=application/octet-stream; transfer-syntax=*"
FRAMES_NATIVE = "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"


def make_store(s3: MotoS3, bucket: str, staging: Path, endpoint: str | None = None) -> S3Store:
    return S3Store(bucket, staging, prefix="arch", endpoint_url=endpoint or s3.endpoint, region=REGION,
                   access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)


@pytest.fixture
async def store(moto_s3: MotoS3, tmp_path: Path) -> AsyncIterator[S3Store]:  # noqa: F811
    s = make_store(moto_s3, moto_s3.new_bucket(), tmp_path / "staging")
    await s.start()
    yield s
    s.close()


def incomplete_uploads(store: S3Store) -> list[dict[str, Any]]:
    return store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- the store ---------------------------------------------------------------------------------


async def test_multipart_commit_then_ranged_reads(store: S3Store) -> None:
    """A blob past the multipart threshold goes up in parts and comes back byte for byte,
    through every read path, with nothing left staged or half-uploaded."""
    data = random.Random(8).randbytes(MULTIPART_THRESHOLD + PART_SIZE // 2 + 12_345)  # 3 parts
    writer = await store.create()
    for i in range(0, len(data), 1 << 20):
        await writer.write(data[i:i + (1 << 20)])
    staged = writer.staged_path()
    await writer.commit("1.2/3.4/5.6.abc.dcm")
    assert not staged.exists() and list(store.tmp_dir.iterdir()) == []
    assert incomplete_uploads(store) == []
    head = store.client.head_object(Bucket=store.bucket, Key="arch/1.2/3.4/5.6.abc.dcm")
    assert head["ContentLength"] == len(data)
    assert await store.size("1.2/3.4/5.6.abc.dcm") == len(data)
    key = "1.2/3.4/5.6.abc.dcm"
    # Streamed in chunks of the asked size, also across part boundaries.
    chunks = [c async for c in store.open_range(key, PART_SIZE - 10, PART_SIZE + 2_500_000, 1 << 20)]
    assert [len(c) for c in chunks] == [1 << 20, 1 << 20, 2_500_010 - 2 * (1 << 20)]
    assert b"".join(chunks) == data[PART_SIZE - 10:PART_SIZE + 2_500_000]
    whole = b"".join([c async for c in store.open_range(key)])
    assert hashlib.sha256(whole).digest() == hashlib.sha256(data).digest()
    # A reader that leaves after the first chunk (a client gone) closes the stream cleanly.
    stream = store.open_range(key)
    assert len(await anext(stream)) == 1 << 20
    await stream.aclose()
    edge = 2 * PART_SIZE
    assert await store.read_range(key, edge - 3, edge + 3) == data[edge - 3:edge + 3]
    # open_sync: seekable, read-ahead, reads past the end are empty.
    with store.open_sync(key) as fp:
        assert fp.read(132)[128:] == data[128:132]
        fp.seek(len(data) - 5)
        assert fp.read(100) == data[-5:]
        fp.seek(-PART_SIZE, os.SEEK_END)
        assert fp.read(PART_SIZE + 1) == data[-PART_SIZE:]
    # read_into: whole small blobs into caller-owned buffers, and a size that does not match.
    small = {"s/1.dcm": b"one", "s/2.dcm": b"second blob"}
    for k, v in small.items():
        w = await store.create()
        await w.write(v)
        await w.commit(k)
    buf = bytearray(14)
    await store.read_into([("s/1.dcm", memoryview(buf)[:3]), ("s/2.dcm", memoryview(buf)[3:])])
    assert bytes(buf) == b"onesecond blob"
    with pytest.raises(StorageError):
        await store.read_into([("s/1.dcm", memoryview(bytearray(4)))])
    assert await store.list("s") == ["s/1.dcm", "s/2.dcm"]
    assert await store.list_recursive() == ["1.2/3.4/5.6.abc.dcm", "s/1.dcm", "s/2.dcm"]
    assert await store.list_recursive("1.2") == ["1.2/3.4/5.6.abc.dcm"]


async def test_an_empty_blob_and_a_replaced_staged_file(store: S3Store) -> None:
    empty = await store.create()
    await empty.commit("e/empty.dcm")
    assert await store.size("e/empty.dcm") == 0 and await store.read_range("e/empty.dcm", 0, 0) == b""
    assert [c async for c in store.open_range("e/empty.dcm")] == []
    # replace_with (de-identification's rewrite) is what gets uploaded.
    writer = await store.create()
    await writer.write(b"as sent")
    rewritten = writer.staged_path().with_name("rewrite.tmp")
    rewritten.write_bytes(b"de-identified")
    await writer.replace_with(rewritten)
    await writer.commit("e/deid.dcm")
    assert await store.read_range("e/deid.dcm", 0, 13) == b"de-identified"


async def test_a_failed_commit_leaves_no_object_upload_or_staged_file(moto_s3: MotoS3,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    bucket = moto_s3.new_bucket()
    store = make_store(moto_s3, bucket, tmp_path / "staging")
    await store.start()
    small, big = await store.create(), await store.create()
    await small.write(b"x" * 1000)
    await big.write(b"y" * (MULTIPART_THRESHOLD + 1))
    delete_bucket(store.client, bucket)  # the bucket goes away under the archive
    errors = await store.commit_many([(small, "a/small.dcm"), (big, "a/big.dcm")])
    assert all(isinstance(e, StorageError) and not isinstance(e, StorageFullError) for e in errors)
    assert list(store.tmp_dir.iterdir()) == []  # staged files and upload records are gone
    store.client.create_bucket(Bucket=bucket)
    assert not await store.exists("a/small.dcm") and not await store.exists("a/big.dcm")
    assert incomplete_uploads(store) == []
    store.close()


async def test_start_aborts_the_uploads_of_dead_processes_only(moto_s3: MotoS3,  # noqa: F811
                                                              tmp_path: Path) -> None:
    """An upload is recorded beside the staged file under the process id: the next start
    aborts the ones of processes that are gone, and leaves those of live ones (another server
    process on the same folder)."""
    store = make_store(moto_s3, moto_s3.new_bucket(), tmp_path / "staging")
    await store.start()
    client = store.client
    records = {}
    for owner in (dead_pid(), 1):  # pid 1 always runs
        key = f"arch/1.2/3.4/{owner}.dcm"
        upload = client.create_multipart_upload(Bucket=store.bucket, Key=key)["UploadId"]
        client.upload_part(Bucket=store.bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"p" * 100)
        record = store.tmp_dir / f"{owner}-0123abcd0.part.upload"
        record.write_text(json.dumps({"key": key, "upload_id": upload}), encoding="utf-8")
        (store.tmp_dir / f"{owner}-0123abcd0.part").write_bytes(b"staged")
        records[owner] = (key, record)
    again = make_store(moto_s3, store.bucket, tmp_path / "staging")
    await again.start()
    left = [u["Key"] for u in incomplete_uploads(again)]
    assert left == [records[1][0]]
    assert sorted(p.name for p in again.tmp_dir.iterdir()) == ["1-0123abcd0.part", "1-0123abcd0.part.upload"]
    store.close()
    again.close()


async def test_s3_failures_are_storage_errors(store: S3Store, tmp_path: Path, moto_s3: MotoS3) -> None:  # noqa: F811
    with pytest.raises(BlobNotFoundError) as missing:
        await store.read_range("no/such.dcm", 0, 10)
    assert isinstance(missing.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        store.open_sync("no/such.dcm")
    with pytest.raises(FileNotFoundError):
        await store.size("no/such.dcm")
    assert not await store.exists("no/such.dcm")
    await store.delete("no/such.dcm")  # deleting what is not there is fine
    # An endpoint that refuses connections: start() says so, as a StorageError.
    refused = make_store(moto_s3, store.bucket, tmp_path / "other", endpoint=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageError) as info:
        await refused.start()
    assert store.bucket in str(info.value)
    refused.close()
    # A bucket that does not exist.
    nobucket = make_store(moto_s3, "no-such-bucket-" + uuid.uuid4().hex[:8], tmp_path / "third")
    with pytest.raises(StorageError, match="does not exist"):
        await nobucket.start()
    nobucket.close()


@pytest.mark.parametrize(("code", "status", "full"), [
    ("QuotaExceeded", 403, True), ("XMinioStorageFull", 507, True), ("InsufficientStorage", 507, True),
    ("AccessDenied", 403, False), ("InternalError", 500, False), ("SlowDown", 503, False)])
def test_service_answers_map_to_storage_errors(code: str, status: int, full: bool) -> None:
    """What the services answer when out of room (MinIO, Ceph RGW quotas) is StorageFullError,
    so that ingest answers 0xA700; anything else is a plain StorageError (0x0110, 503)."""
    answer = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    error = _s3_error(ClientError(answer, "PutObject"), "commit")  # type: ignore[arg-type]
    assert isinstance(error, StorageError) and isinstance(error, StorageFullError) == full


# -- configuration -----------------------------------------------------------------------------


def test_storage_s3_configuration(tmp_path: Path) -> None:
    path = tmp_path / "archive.toml"
    path.write_text('[storage]\nbackend = "s3"\npath = "staging"\n[storage.s3]\nbucket = "dicom-prod"\n'
                    'prefix = "site-a/"\nendpoint_url = "https://minio.example:9000"\nregion = "eu-west-1"\n',
                    encoding="utf-8")
    cfg = config.load(path)
    assert cfg.storage.backend == "s3" and cfg.storage_path == tmp_path / "staging"
    s3 = cfg.storage.s3
    assert (s3.bucket, s3.prefix, s3.region) == ("dicom-prod", "site-a/", "eu-west-1")
    assert s3.endpoint_url == "https://minio.example:9000"
    assert s3.access_key_id == ""  # the AWS environment variables / boto3's chain
    secret = config.from_dict({"storage": {"backend": "s3", "s3": {
        "bucket": "b-1", "access_key_id": "AKIA", "secret_access_key": "do-not-log"}}})
    assert "do-not-log" not in repr(secret)


@pytest.mark.parametrize(("s3", "named"), [
    ({}, "bucket"),
    ({"bucket": "a/b"}, "bucket"),
    ({"bucket": "ok-bucket", "prefix": "../up"}, "prefix"),
    ({"bucket": "ok-bucket", "prefix": "a b"}, "prefix"),
    ({"bucket": "ok-bucket", "endpoint_url": "minio:9000"}, "endpoint_url"),
    ({"bucket": "ok-bucket", "access_key_id": "AKIA"}, "secret_access_key"),
    ({"bucket": "ok-bucket", "region": 5}, "region"),
    ({"bucket": "ok-bucket", "buckett": "x"}, "buckett"),
])
def test_bad_storage_s3_settings_name_the_key(s3: dict[str, Any], named: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.from_dict({"storage": {"backend": "s3", "s3": s3}})
    assert named in str(info.value)
    with pytest.raises(config.ConfigError, match="backend"):
        config.from_dict({"storage": {"backend": "ftp"}})


# -- a server on S3 ----------------------------------------------------------------------------


def s3_server(root: Path, s3: MotoS3, bucket: str, dimse: bool = False,
              credentials: bool = True) -> LiveServer:
    """``imaging-archive serve`` with ``[storage] backend = "s3"`` on ``bucket``."""
    root.mkdir(parents=True, exist_ok=True)
    server = LiveServer(root, extra_toml=s3.store_toml(bucket, credentials=credentials), dimse=dimse)
    text = server.config.read_text(encoding="utf-8")
    server.config.write_text(text.replace("[storage]\n", '[storage]\nbackend = "s3"\n', 1), encoding="utf-8")
    return server


def parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart/related body, with the stdlib's MIME parser (independent of ours)."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    return [(dict(p.items()), p.get_payload(decode=True)) for p in msg.iter_parts()]


def stow(server: LiveServer, files: list[bytes]) -> requests.Response:
    body, ctype = multipart(files)
    return requests.post(server.url + "/dicom-web/studies", data=body, headers={"Content-Type": ctype},
                         timeout=120)


ROWS, COLS, FRAMES = 1024, 1024, 100  # 200 MiB of 16-bit pixels
FRAME_BYTES = ROWS * COLS * 2


def write_big_instance(path: Path) -> tuple[str, str, str, int]:
    """A 100-frame native CT of 200 MiB, its pixels random (every byte range differs). Returns
    its UIDs and the offset of its pixel data value."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.Modality = "S3-BIG", "Big^Object", "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLS, FRAMES
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    head = buf.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + (FRAME_BYTES * FRAMES).to_bytes(4, "little")
    rng = random.Random(200)
    with open(path, "wb") as f:
        f.write(head)
        for _ in range(FRAMES):
            f.write(rng.randbytes(FRAME_BYTES))
    return study, series, sop, len(head)


def read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def test_200_mb_instance_goes_up_in_parts_and_comes_back_in_ranges(moto_s3: MotoS3,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    """STOW-RS of a 200 MB instance: multipart upload to S3; WADO-RS of it byte-identical,
    frames and a bulk data Range by ranged GETs, a rendered frame; the server's memory stays
    far below the instance's size throughout."""
    source = tmp_path / "big.dcm"
    study, series, sop, pixel_offset = write_big_instance(source)
    size = source.stat().st_size
    bucket = moto_s3.new_bucket()
    server = s3_server(tmp_path / "server", moto_s3, bucket)
    server.start()
    try:
        assert requests.get(server.url + "/dicom-web/studies", timeout=10).status_code in (200, 204)
        base = psutil.Process(server.proc.pid).memory_info().rss  # type: ignore[union-attr]
        sampler = PeakRss(server.proc.pid)  # type: ignore[union-attr]
        sampler.start()
        boundary = uuid.uuid4().hex

        def body() -> Iterator[bytes]:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            with open(source, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk
            yield f"\r\n--{boundary}--\r\n".encode()

        resp = requests.post(server.url + "/dicom-web/studies", data=body(), timeout=300, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert resp.status_code == 200, resp.text
        client = moto_s3.client()
        objects = client.list_objects_v2(Bucket=bucket, Prefix=f"archive/{study}/").get("Contents", [])
        assert [o["Size"] for o in objects] == [size]
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert list((tmp_path / "server" / "files" / "tmp").iterdir()) == []  # nothing staged left
        url = f"{server.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}"
        # The instance, streamed back byte-identical.
        with requests.get(url, headers={"Accept": ANY_TS}, stream=True, timeout=300) as got:
            assert got.status_code == 200
            digest, head = hashlib.sha256(), b""
            for chunk in got.iter_content(1 << 20):
                if len(head) < 4096:
                    head += chunk
                digest.update(chunk)
        ctype = got.headers["Content-Type"]
        boundary_out = ctype.split("boundary=")[1].split(";")[0].strip('"').encode()
        preamble = head.index(b"\r\n\r\n") + 4
        assert head.startswith(b"--" + boundary_out)
        # Whole-body hash: part head + file + closing; recompute the expected one.
        expected = hashlib.sha256(head[:preamble])
        with open(source, "rb") as f:
            while chunk := f.read(1 << 20):
                expected.update(chunk)
        expected.update(b"\r\n--" + boundary_out + b"--\r\n")
        assert digest.hexdigest() == expected.hexdigest()
        # Frames: 1, 50, 100, each a ranged read of its bytes.
        got = requests.get(url + "/frames/1,50,100", headers={"Accept": FRAMES_AS_STORED}, timeout=120)
        assert got.status_code == 200
        parts = [payload for _, payload in parse_multipart(got.content, got.headers["Content-Type"])]
        assert parts == [read_at(source, pixel_offset + (n - 1) * FRAME_BYTES, FRAME_BYTES)
                         for n in (1, 50, 100)]
        # Bulk data with a Range: 206 with those bytes.
        got = requests.get(url + "/bulk/7FE00010", timeout=60, headers={
            "Accept": "application/octet-stream", "Range": "bytes=104857000-104858999"})
        assert got.status_code == 206 and got.content == read_at(source, pixel_offset + 104857000, 2000)
        # A rendered frame of an instance too large to hand to a codec process whole.
        got = requests.get(url + "/frames/50/rendered", headers={"Accept": "image/png"}, timeout=120)
        assert got.status_code == 200 and got.content.startswith(b"\x89PNG")
        sampler.done.set()
        sampler.join()
        growth = sampler.peak - base
        print(f"server RSS {base / 2**20:.0f} MiB, peak growth {growth / 2**20:.0f} MiB "
              f"for a {size / 2**20:.0f} MiB instance")
        assert growth < size * 0.3, f"server memory grew by {growth / 2**20:.0f} MiB"
    finally:
        server.stop()


# Real files of several vendors and encodings (the pydicom-bundled ones on a clone without the
# shared samples): native, big endian, deflated, JPEG, JPEG 2000, RLE, multi-frame, colour, SR.
SAMPLES = ["mr/MR_Siemens_with_overlays.dcm", "transfer-syntax/CT_DeflatedExplicitVRLittleEndian.dcm",
           "multiframe/EnhancedCT_2frames_JPEGExtended_fragmented_noBOT.dcm",
           "us/US_ALOKA_16bit_BigEndian.dcm", "chest-xray/CR_chest_RG1_J2KI.dcm",
           "multiframe/EnhancedMR_emri_small_10f_RLE.dcm", "color/TestPattern_RGB.dcm",
           "non-image/SR_basic_text_no_pixel_data.dcm", "multiframe/US_multiframe_30f_JPEG_YBR.dcm"]


def chosen_samples() -> list[tuple[Path, Dataset]]:
    found = [s for s in storable() if s.name in SAMPLES] or storable()[:8]
    by_uid: dict[str, tuple[Path, Dataset]] = {}
    for s in found:
        ds = dcmread(s.path, stop_before_pixels=True)
        by_uid.setdefault(str(ds.SOPInstanceUID), (s.path, ds))
    return list(by_uid.values())


def fetch(server: LiveServer, path: str, accept: str | None = None) -> tuple[int, Any]:
    """Status and a comparable body: multipart parts, JSON with the server's URL taken out, zip
    entries by name, or the bytes."""
    resp = requests.get(server.url + path, headers={"Accept": accept} if accept else {}, timeout=60)
    ctype = resp.headers.get("Content-Type", "")
    if resp.status_code != 200:
        return resp.status_code, None
    if ctype.startswith("multipart/related"):
        return 200, [(h.get("Content-Type"), p) for h, p in parse_multipart(resp.content, ctype)]
    if "json" in ctype:
        return 200, json.loads(resp.text.replace(server.url, "BASE"))
    if ctype == "application/zip":
        with zipfile.ZipFile(io.BytesIO(resp.content)) as z:
            return 200, {n: z.read(n) for n in z.namelist()}
    return 200, resp.content


def c_get(server: LiveServer, study: str, sop_class: str, ts: str) -> list[Dataset]:
    """C-GET of a study (pynetdicom as the SCU): the data sets the archive sends back."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(sop_class, [ts, ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="IMAGING-ARCHIVE",
                         ext_neg=[build_role(sop_class, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study
    statuses = [s.Status for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet) if s]
    assoc.release()
    assert statuses[-1] == 0x0000
    return received


def test_samples_on_s3_answer_as_on_the_filesystem(moto_s3: MotoS3, tmp_path: Path) -> None:  # noqa: F811
    """The same real files into a filesystem archive and an S3 archive: every retrieve, frame,
    rendered image, thumbnail and zip is the same; with S3 stopped, QIDO-RS and metadata still
    answer (they never touch S3), storing fails with nothing indexed, and a frame is a 503."""
    samples = chosen_samples()
    files = [p.read_bytes() for p, _ in samples]
    own = MotoS3()  # an endpoint of its own, stopped mid-test (the buckets live on in moto)
    own.start()
    (tmp_path / "fs").mkdir()
    fs = LiveServer(tmp_path / "fs")
    s3 = s3_server(tmp_path / "s3", own, own.new_bucket(), dimse=True)
    try:
        fs.start()
        s3.start()
        for server in (fs, s3):
            assert stow(server, files).status_code == 200
        paths: list[tuple[str, str | None]] = [("/dicom-web/studies?includefield=all", None)]
        for _, ds in samples:
            study = f"/dicom-web/studies/{ds.StudyInstanceUID}"
            series = f"{study}/series/{ds.SeriesInstanceUID}"
            inst = f"{series}/instances/{ds.SOPInstanceUID}"
            paths += [(inst, ANY_TS), (series, ANY_TS), (study + "/metadata", None),
                      (series + "/instances", None), (study, "application/zip")]
            if "PixelData" in ds or "Rows" in ds:
                paths += [(inst + "/frames/1", FRAMES_AS_STORED), (inst + "/frames/1", FRAMES_NATIVE),
                          (inst + "/rendered", "image/jpeg"), (series + "/thumbnail", "image/jpeg")]
        answers = {}
        for path, accept in paths:
            expected, got = fetch(fs, path, accept), fetch(s3, path, accept)
            assert got == expected, f"{path} ({accept}): {got[0]} on S3, {expected[0]} on the filesystem"
            answers[(path, accept)] = got
        for (path, ds), data in zip(samples, files, strict=True):
            inst = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                    f"/instances/{ds.SOPInstanceUID}")
            assert answers[(inst, ANY_TS)][1][0][1] == data, path.name  # as stored, byte for byte
            zipped = answers[(f"/dicom-web/studies/{ds.StudyInstanceUID}", "application/zip")][1]
            assert list(zipped.values()) == [data]
        rendered = [a[1] for (p, acc), a in answers.items() if acc == "image/jpeg" and a[0] == 200]
        assert rendered and all(r.startswith(b"\xff\xd8") for r in rendered)
        # C-GET (DIMSE) reads the object through open_sync's ranged reads.
        path, ds = samples[0]
        got = c_get(s3, ds.StudyInstanceUID, ds.SOPClassUID, str(ds.file_meta.TransferSyntaxUID))
        original = dcmread(path)
        assert [g.SOPInstanceUID for g in got] == [ds.SOPInstanceUID]
        assert got[0].PixelData == original.PixelData
        # S3 goes down.
        own.stop()
        for path, accept in paths:
            if path.endswith(("/metadata", "/instances")) or "?" in path:
                assert fetch(s3, path, accept) == answers[(path, accept)], path  # index only
        late = synth.dataset()
        resp = stow(s3, [synth.encode(late)])
        assert resp.status_code == 409, resp.text
        assert "00081198" in resp.json()  # a failed SOP entry, not a 500
        found = requests.get(f"{s3.url}/dicom-web/studies", timeout=10,
                             params={"StudyInstanceUID": late.StudyInstanceUID})
        assert found.status_code == 200 and found.json() == []  # nothing indexed
        frame = f"{[p for p, a in paths if p.endswith('/frames/1')][0]}"
        down = requests.get(s3.url + frame, headers={"Accept": FRAMES_AS_STORED}, timeout=60)
        assert down.status_code == 503 and "Retry-After" in down.headers
        # Back up: served again, no restart.
        own.start()
        assert fetch(s3, frame, FRAMES_AS_STORED) == answers[(frame, FRAMES_AS_STORED)]
        assert stow(s3, [synth.encode(late)]).status_code == 200
    finally:
        fs.stop()
        s3.stop()
        own.stop()
    log = (tmp_path / "s3" / "server.log").read_text()
    assert "Traceback" not in log


def test_a_removed_bucket_fails_the_upload_and_indexes_nothing(moto_s3: MotoS3,  # noqa: F811
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The durability rule on S3: the bucket removed under a running archive, a STOW-RS fails
    (0x0110) and leaves no index row; an instance whose object went with it is a 503, not a 500.
    This server has no keys in its configuration: it signs with the AWS environment variables."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))  # the variables, nothing else
    bucket = moto_s3.new_bucket()
    server = s3_server(tmp_path, moto_s3, bucket, credentials=False)
    server.start()
    try:
        first = synth.dataset()
        assert stow(server, [synth.encode(first)]).status_code == 200
        delete_bucket(moto_s3.client(), bucket)
        lost = synth.dataset()
        resp = stow(server, [synth.encode(lost)])
        assert resp.status_code == 409
        failed = resp.json()["00081198"]["Value"]
        assert [f["00081197"]["Value"][0] for f in failed] == [0x0110]
        found = requests.get(f"{server.url}/dicom-web/studies?StudyInstanceUID={lost.StudyInstanceUID}",
                             timeout=10)
        assert found.status_code == 200 and found.json() == []
        frame = (f"{server.url}/dicom-web/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
                 f"/instances/{first.SOPInstanceUID}/frames/1")
        gone = requests.get(frame, headers={"Accept": FRAMES_AS_STORED}, timeout=30)
        assert gone.status_code == 503
        assert list((tmp_path / "files" / "tmp").iterdir()) == []
    finally:
        server.stop()
    assert "Traceback" not in (tmp_path / "server.log").read_text()

