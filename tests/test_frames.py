"""WADO-RS Retrieve Frames (PS3.18 §10.4.1.1.3) and byte ranges of bulk data.

Frames are checked against pydicom: native frames value by value (``pixel_array(index=...)``),
encapsulated frames byte for byte against ``pydicom.encaps.get_frame`` and, decoded, against
pydicom's decoding of the original file.
"""

from __future__ import annotations

import copy
import re
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, get_frame
from pydicom.pixels import get_decoder, get_encoder, pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, RLELossless

from archive.pixels import frames as px
from storage.filesystem import FilesystemStore
from tests import synth
from tests.conftest import multipart
from tests.samples import storable
from tests.test_roundtrip import parse_multipart

EXPLICIT_LE = "1.2.840.10008.1.2.1"
ANY_TS = "multipart/related; type=application/octet-stream; transfer-syntax=*"  # OHIF v3's
NATIVE = f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT_LE}'
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


# -- helpers -------------------------------------------------------------------------------------


async def _stow(client, data: bytes) -> str:
    """Store one file; the instance's WADO-RS URL path."""
    body, ctype = multipart([data])
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 200, await resp.text()
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    return (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


async def _frames(client, url: str, numbers: str, accept: str | None = ANY_TS,
                  status: int = 200) -> list[tuple[dict[str, str], bytes]]:
    resp = await client.get(f"{url}/frames/{numbers}", headers={"Accept": accept} if accept else {})
    body = await resp.read()
    assert resp.status == status, body[:300]
    if status != 200:
        return []
    ctype = resp.headers["Content-Type"]
    assert ctype.startswith("multipart/related"), ctype
    if "Content-Length" in resp.headers:
        assert int(resp.headers["Content-Length"]) == len(body)
    return parse_multipart(body, ctype)


def _ts_of(headers: dict[str, str]) -> str | None:
    found = re.search(r"transfer-syntax=\"?([0-9.]+)", headers["Content-Type"])
    return found.group(1) if found else None


def _pixel_keyword(ds: Dataset) -> str | None:
    return next((k for k in PIXEL_KEYWORDS if k in ds), None)


def _as_array(frame: bytes, like: np.ndarray, ds: Dataset) -> np.ndarray:
    """Our little-endian native frame as pydicom would present it."""
    if int(ds.BitsAllocated) == 1:
        bits = np.unpackbits(np.frombuffer(frame, np.uint8), bitorder="little")[:like.size]
        return bits.reshape(like.shape)
    return np.frombuffer(frame, like.dtype.newbyteorder("<")).reshape(like.shape)


def _check_native(frame: bytes, ds: Dataset, src: Any, index: int) -> None:
    if ds.PhotometricInterpretation == "YBR_FULL_422":
        # pydicom upsamples these; the frame itself keeps two values per pixel (PS3.3 C.7.6.3.1.2).
        length = int(ds.Rows) * int(ds.Columns) * 2 * int(ds.BitsAllocated) // 8
        assert frame == ds.PixelData[index * length:(index + 1) * length]
        return
    want = pixel_array(src, index=index, raw=True)
    got = _as_array(frame, want, ds)
    if int(ds.get("BitsStored", ds.BitsAllocated)) < int(ds.BitsAllocated) and int(ds.BitsAllocated) > 1:
        mask = (1 << int(ds.BitsStored)) - 1  # pydicom may clear the unused high bits
        assert np.array_equal(got.astype(np.int64) & mask, want.astype(np.int64) & mask)
    else:
        assert np.array_equal(got, want, equal_nan=got.dtype.kind == "f")


def _reference(src: Any, index: int) -> np.ndarray | None:
    """pydicom's decoding of frame ``index`` of the original, None if pydicom cannot."""
    try:
        return pixel_array(src, index=index)
    except Exception:
        return None


def _decode_alone(ds: Dataset, frame: bytes) -> np.ndarray:
    """pydicom's decoding of one compressed frame as we sent it."""
    one = Dataset()
    one.update({e.tag: copy.deepcopy(e) for e in ds if e.tag < 0x7FE00000})
    one.file_meta = copy.deepcopy(ds.file_meta)
    one.NumberOfFrames = 1
    one.PixelData = encapsulate([frame])
    one["PixelData"].VR = "OB"
    return pixel_array(one)


def _encapsulated_frame(ds: Dataset, index: int) -> bytes:
    ext = None
    if "ExtendedOffsetTable" in ds:
        ext = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    return get_frame(ds.PixelData, index, number_of_frames=int(ds.get("NumberOfFrames") or 1),
                     extended_offsets=ext)


# -- every sample ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", storable(), ids=lambda s: s.name)
async def test_sample_first_and_last_frame(client, sample) -> None:
    data = sample.path.read_bytes()
    ds = dcmread(BytesIO(data))
    url = await _stow(client, data)
    keyword = _pixel_keyword(ds)
    if keyword is None:
        resp = await client.get(f"{url}/frames/1", headers={"Accept": ANY_TS})
        assert resp.status == 404 and "no pixel data" in await resp.text()
        return
    ts = UID(ds.file_meta.TransferSyntaxUID)
    count = int(ds.get("NumberOfFrames") or 1)
    for number in sorted({1, count}):
        index = number - 1
        # As stored (transfer-syntax=*, what OHIF asks for).
        ((headers, frame),) = await _frames(client, url, str(number))
        if ts.is_encapsulated and ts != px.ENCAPSULATED_UNCOMPRESSED:
            assert _ts_of(headers) == ts
            media = px.MEDIA_TYPES.get(ts, "application/octet-stream")
            assert headers["Content-Type"].startswith(media)
            assert frame == _encapsulated_frame(ds, index)
            want = _reference(sample.path, index)
            if want is not None:
                assert np.array_equal(_decode_alone(ds, frame), want)
        else:
            assert _ts_of(headers) == EXPLICIT_LE
            assert headers["Content-Type"].startswith("application/octet-stream")
            _check_native(frame, ds, sample.path if ts != px.DEFLATED else ds, index)
        # Uncompressed, Explicit VR Little Endian asked for.
        resp = await client.get(f"{url}/frames/{number}", headers={"Accept": NATIVE})
        if not ts.is_encapsulated:
            assert resp.status == 200
            ((_, again),) = parse_multipart(await resp.read(), resp.headers["Content-Type"])
            assert again == frame
            continue
        want = _reference(sample.path, index)
        if resp.status == 406 or want is None:
            assert resp.status in (200, 406), await resp.text()
            continue
        assert resp.status == 200, await resp.text()
        ((headers, decoded),) = parse_multipart(await resp.read(), resp.headers["Content-Type"])
        assert _ts_of(headers) == EXPLICIT_LE
        _check_decoded(decoded, ds, sample.path, index)


def _check_decoded(decoded: bytes, ds: Dataset, path: Path, index: int) -> None:
    """A frame decoded by the archive: native little-endian values, exactly as one of pydicom's
    decoding plugins gives them (lossy JPEG decoders round the IDCT and upsample chroma each
    their own way), with or without pydicom's YCbCr -> RGB; 1-bit frames bit-packed like
    native ones."""
    plugins = get_decoder(ds.file_meta.TransferSyntaxUID).available_plugins
    tried = []
    for plugin in plugins:
        for raw in (False, True):
            try:
                want = pixel_array(path, index=index, raw=raw, decoding_plugin=plugin)
            except Exception as exc:  # e.g. GDCM and 12-bit JPEG Extended
                tried.append((plugin, raw, type(exc).__name__))
                continue
            if int(ds.BitsAllocated) == 1:
                got = _as_array(decoded, want, ds) if len(decoded) == (want.size + 7) // 8 else None
            elif want.nbytes == len(decoded):
                got = np.frombuffer(decoded, want.dtype.newbyteorder("<")).reshape(want.shape)
            else:
                got = None
            if got is not None and np.array_equal(got, want):
                return
            tried.append((plugin, raw, None if got is None else int(np.abs(
                got.astype(np.int64) - want.astype(np.int64)).max())))
    raise AssertionError(f"decoded frame matches no pydicom decoding: {tried}")


# -- frame lists -----------------------------------------------------------------------------------


@pytest.fixture
async def three_frames(client) -> tuple[str, bytes]:
    """A 3-frame 4x4 16-bit native instance; its URL and pixel data."""
    ds = synth.dataset(rows=4, columns=4, frames=3)
    return await _stow(client, synth.encode(ds)), ds.PixelData


@pytest.mark.parametrize("frames", ["0", "-1", "a", "1,a", "1,,2", "1.5", "%20", ",", "1,0", "0x1",
                                    "", "+1", "١"])
async def test_malformed_frame_list_is_400(client, three_frames, frames: str) -> None:
    url, _ = three_frames
    resp = await client.get(f"{url}/frames/{frames}", headers={"Accept": ANY_TS})
    assert resp.status == 400, (frames, resp.status)
    assert "frame" in await resp.text()


@pytest.mark.parametrize("frames", ["4", "1,4", "99999999999999999999"])
async def test_frame_beyond_number_of_frames_is_404(client, three_frames, frames: str) -> None:
    url, _ = three_frames
    resp = await client.get(f"{url}/frames/{frames}", headers={"Accept": ANY_TS})
    assert resp.status == 404
    assert "3 frame" in await resp.text()


@pytest.mark.parametrize("frames", ["3,1,3", "3%2C1%2C3", "3%2c1,3"])
async def test_frames_in_order_given_duplicates_kept(client, three_frames, frames: str) -> None:
    url, pixels = three_frames
    parts = await _frames(client, url, frames)
    size = 4 * 4 * 2
    assert [p for _, p in parts] == [pixels[2 * size:], pixels[:size], pixels[2 * size:]]
    for headers, data in parts:
        assert headers["Content-Type"].replace('"', "") == \
            f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        assert int(headers["Content-Length"]) == len(data)


async def test_unknown_instance_and_no_pixel_data(client, three_frames) -> None:
    url, _ = three_frames
    other = url.rsplit("/", 1)[0] + "/" + synth.uid()
    resp = await client.get(f"{other}/frames/1")
    assert resp.status == 404
    ds = synth.dataset()
    del ds.PixelData
    url = await _stow(client, synth.encode(ds))
    resp = await client.get(f"{url}/frames/1")
    assert resp.status == 404 and "no pixel data" in await resp.text()


# -- native layouts --------------------------------------------------------------------------------


def _native(rows: int, columns: int, frames: int, bits: int, pixels: bytes, vr: str = "OW",
            **extra: Any) -> Dataset:
    ds = synth.dataset(rows=rows, columns=columns, frames=frames)
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelData = pixels
    ds["PixelData"].VR = vr
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


async def test_one_bit_frames_that_start_mid_byte(client) -> None:
    """5x5 1-bit frames: frame 2 starts at bit 25 (PS3.5 §8.1.1, bits packed across frames)."""
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2, 25 * 3, dtype=np.uint8)
    packed = np.packbits(bits, bitorder="little").tobytes()
    ds = _native(5, 5, 3, 1, packed + b"\0" * (len(packed) % 2), vr="OB")
    data = synth.encode(ds)
    url = await _stow(client, data)
    parts = await _frames(client, url, "1,2,3")
    for i, (headers, frame) in enumerate(parts):
        assert len(frame) == 4 and int(headers["Content-Length"]) == 4
        got = np.unpackbits(np.frombuffer(frame, np.uint8), bitorder="little")
        assert np.array_equal(got[:25], bits[25 * i:25 * (i + 1)])
        assert not got[25:].any()  # padding bits are zero
        assert np.array_equal(got[:25].reshape(5, 5), pixel_array(BytesIO(data), index=i, raw=True))


def _big_endian(ds: Dataset) -> bytes:
    """``ds`` written as Explicit VR Big Endian (pixel words swapped by hand: pydicom writes
    OW values as they are)."""
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    buf = BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=False, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("bits", [8, 16])
async def test_big_endian_frames_come_little_endian(client, bits: int) -> None:
    """OW words of a big-endian file are swapped; 8-bit frames of odd length start mid-word."""
    rows, columns, count = 5, 5, 3
    values = (np.arange(rows * columns * count) * 7 % 251).astype(f"u{bits // 8}")
    little = values.astype(f"<u{bits // 8}").tobytes()
    little += b"\0" * (len(little) % 2)
    swapped = np.frombuffer(little, np.uint8).reshape(-1, 2)[:, ::-1].tobytes()
    ds = _native(rows, columns, count, bits, swapped)
    data = _big_endian(ds)
    url = await _stow(client, data)
    parts = await _frames(client, url, "1,2,3")
    size = rows * columns * bits // 8
    for i, (_, frame) in enumerate(parts):
        assert frame == little[i * size:(i + 1) * size]
        assert np.array_equal(np.frombuffer(frame, f"<u{bits // 8}").reshape(rows, columns),
                              pixel_array(BytesIO(data), index=i))


# -- encapsulated layouts ---------------------------------------------------------------------------


def _rle_frames(count: int, rows: int = 8, columns: int = 8) -> tuple[list[bytes], np.ndarray]:
    arr = (np.arange(count * rows * columns, dtype=np.uint32) * 13 % 4001).astype(np.uint16)
    arr = arr.reshape(count, rows, columns)
    encoder = get_encoder(RLELossless)
    opts = dict(rows=rows, columns=columns, samples_per_pixel=1, bits_allocated=16, bits_stored=16,
                pixel_representation=0, photometric_interpretation="MONOCHROME2", number_of_frames=1)
    return [encoder.encode(arr[i], **opts) for i in range(count)], arr


def _encapsulated(frames: list[bytes], ts: str = RLELossless, size: int = 8, **kwargs: Any) -> Dataset:
    ds = synth.dataset(rows=size, columns=size, frames=len(frames))
    ds.file_meta.TransferSyntaxUID = ts
    ds.PixelData = encapsulate(frames, **kwargs)
    ds["PixelData"].VR = "OB"
    return ds


@pytest.mark.parametrize("layout", ["bot", "no-bot", "fragmented-no-bot", "fragmented-bot",
                                    "eot-inline", "eot-bulk"])
async def test_encapsulated_layouts(client, layout: str) -> None:
    """Frame -> fragments by Extended Offset Table (inline or bulk), Basic Offset Table, one
    fragment per frame, or, fragmented without any table, by each codestream's RLE header."""
    count = 120 if layout == "eot-bulk" else 5
    encoded, arr = _rle_frames(count)
    if layout.startswith("eot"):
        ds = synth.dataset(rows=8, columns=8, frames=count)
        ds.file_meta.TransferSyntaxUID = RLELossless
        pixel, offsets, lengths = encapsulate_extended(encoded)
        ds.PixelData = pixel
        ds["PixelData"].VR = "OB"
        ds.ExtendedOffsetTable = offsets
        ds.ExtendedOffsetTableLengths = lengths
    else:
        per_frame = 3 if layout.startswith("fragmented") else 1
        ds = _encapsulated(encoded, has_bot="no-bot" not in layout, fragments_per_frame=per_frame)
    url = await _stow(client, synth.encode(ds))
    wanted = [1, 2, count, 1] if count > 2 else [1, count]
    parts = await _frames(client, url, ",".join(map(str, wanted)))
    for number, (headers, frame) in zip(wanted, parts, strict=True):
        assert headers["Content-Type"].replace('"', "") == \
            f"image/dicom-rle; transfer-syntax={RLELossless}"
        assert frame == encoded[number - 1] + b"\0" * (len(encoded[number - 1]) % 2)
        assert np.array_equal(_decode_alone(ds, frame), arr[number - 1])


async def test_encapsulated_uncompressed_frames(client) -> None:
    """Encapsulated Uncompressed Explicit VR Little Endian (PS3.5 A.4.11): each fragment is a
    native frame padded to even length; frames come as application/octet-stream, cut to size."""
    values = (np.arange(5 * 5 * 3) * 3 % 256).astype(np.uint8)
    frames = [values[i * 25:(i + 1) * 25].tobytes() for i in range(3)]
    ds = _native(5, 5, 3, 8, b"", vr="OB")
    ds.file_meta.TransferSyntaxUID = px.ENCAPSULATED_UNCOMPRESSED
    ds.PixelData = encapsulate([f + b"\0" for f in frames])
    url = await _stow(client, synth.encode(ds))
    for accept in (ANY_TS, NATIVE):
        parts = await _frames(client, url, "3,1", accept)
        assert [p for _, p in parts] == [frames[2], frames[0]]
        assert all(_ts_of(h) == EXPLICIT_LE for h, _ in parts)


# -- negotiation -------------------------------------------------------------------------------------


@pytest.fixture
async def rle(client) -> tuple[str, list[bytes], np.ndarray]:
    encoded, arr = _rle_frames(3)
    return await _stow(client, synth.encode(_encapsulated(encoded))), encoded, arr


@pytest.mark.parametrize("accept", [
    None,  # multipart/related of the stored syntax
    "*/*",
    ANY_TS,
    'multipart/related; type="image/dicom-rle"',
    "multipart/related; type=image/x-dicom-rle",
    f'multipart/related; type="image/dicom-rle"; transfer-syntax={RLELossless}',
    'multipart/related; type="image/*"',
    'multipart/related; type="*/*"',  # dicomweb-client's default
    'multipart/related; type="image/jpeg", multipart/related; type="image/dicom-rle"; q=0.5',
])
async def test_compressed_frames_as_stored(client, rle, accept: str | None) -> None:
    url, encoded, _ = rle
    resp = await client.get(f"{url}/frames/2", headers={"Accept": accept} if accept else {})
    assert resp.status == 200, await resp.text()
    ctype = resp.headers["Content-Type"]
    assert ctype.startswith('multipart/related; type="image/dicom-rle"')
    ((headers, frame),) = parse_multipart(await resp.read(), ctype)
    assert _ts_of(headers) == RLELossless
    assert frame == encoded[1]


@pytest.mark.parametrize("accept", [
    'multipart/related; type="image/jpeg"',
    'multipart/related; type="image/jls"',
    f'multipart/related; type="image/jpeg"; transfer-syntax={RLELossless}',
    'multipart/related; type="application/dicom"',
    "text/html",
])
async def test_unservable_media_type_is_406(client, rle, accept: str) -> None:
    url, _, _ = rle
    resp = await client.get(f"{url}/frames/1", headers={"Accept": accept})
    assert resp.status == 406
    assert "image/dicom-rle" in await resp.text()


@pytest.mark.parametrize("accept", [
    NATIVE,
    'multipart/related; type="application/octet-stream"',
    "multipart/related",
])
async def test_compressed_frames_decoded_on_request(client, rle, accept: str) -> None:
    url, _, arr = rle
    parts = await _frames(client, url, "3,1", accept)
    for (headers, frame), index in zip(parts, [2, 0], strict=True):
        assert headers["Content-Type"].replace('"', "") == \
            f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        assert frame == arr[index].astype("<u2").tobytes()


async def test_frame_that_cannot_be_decoded(client) -> None:
    """A damaged code stream: 406 with the reason when asked decoded; as stored it still goes."""
    encoded, _ = _rle_frames(2)
    damaged = b"\x01\x00\x00\x00\x40\x00\x00\x00" + b"\0" * 56 + b"\x7f\x01"  # 1 segment, 2 bytes
    url = await _stow(client, synth.encode(_encapsulated([damaged, encoded[1]])))
    resp = await client.get(f"{url}/frames/1", headers={"Accept": NATIVE})
    assert resp.status == 406
    assert "frame 1 cannot be decoded" in await resp.text()
    ((_, frame),) = await _frames(client, url, "1")
    assert frame == damaged


async def test_native_frames_negotiation(client, three_frames) -> None:
    url, pixels = three_frames
    for accept in ('multipart/related; type="image/jpeg"', "multipart/related; type=image/jp2",
                   f'multipart/related; type="application/octet-stream"; transfer-syntax={RLELossless}'):
        resp = await client.get(f"{url}/frames/1", headers={"Accept": accept})
        assert resp.status == 406, accept
    # A bare media type asks for a single-part body (PS3.18 §8.6.1.1): one frame only.
    resp = await client.get(f"{url}/frames/2", headers={"Accept": "application/octet-stream"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert await resp.read() == pixels[32:64]
    resp = await client.get(f"{url}/frames/1,2", headers={"Accept": "application/octet-stream"})
    assert resp.status == 406


def _cornerstone_parse(body: bytes, content_type: str) -> tuple[bytes, str]:
    """What cornerstone's dicom-image-loader (wadors/getPixelData.ts) does with a frame
    response: the first part's bytes, and the transfer syntax of the part's Content-Type
    (getTransferSyntaxForContentType; default Implicit VR Little Endian)."""
    assert "multipart" in content_type
    token = body.index(b"\r\n\r\n")
    header = body[:token].decode("latin-1").split("\r\n")
    boundary = next(line for line in header if line.startswith("--"))
    offset = token + 4
    end = body.index(boundary.encode(), offset)
    part_type = next(line[13:].strip() for line in header if line.startswith("Content-Type:"))
    params = dict(p.strip().split("=", 1) for p in part_type.split(";")[1:] if "=" in p)
    return body[offset:end - 2], params.get("transfer-syntax", "1.2.840.10008.1.2").strip('"')


async def test_what_ohif_gets(client, rle, three_frames) -> None:
    """OHIF v3 asks every frame with ``type=application/octet-stream; transfer-syntax=*``."""
    url, encoded, _ = rle
    resp = await client.get(f"{url}/frames/3", headers={"Accept": ANY_TS})
    frame, ts = _cornerstone_parse(await resp.read(), resp.headers["Content-Type"])
    assert (frame, ts) == (encoded[2], RLELossless)
    url, pixels = three_frames
    resp = await client.get(f"{url}/frames/3", headers={"Accept": ANY_TS})
    frame, ts = _cornerstone_parse(await resp.read(), resp.headers["Content-Type"])
    assert (frame, ts) == (pixels[64:], EXPLICIT_LE)


# -- 1,000 frames: only the frame is read ------------------------------------------------------------


class ReadMeter:
    """Counts the bytes FilesystemStore.open_range and read_range return; the store's whole-file
    accessors (open_sync, open_local, read_into) are made to fail, so every byte a frame request
    reads from the stored file is counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        original_range, original_read = FilesystemStore.open_range, FilesystemStore.read_range

        async def counting(store, key, start=0, end=None, chunk_size=1 << 20):
            async for chunk in original_range(store, key, start, end, chunk_size):
                self.bytes += len(chunk)
                yield chunk

        async def counting_read(store, key, start, end):
            data = await original_read(store, key, start, end)
            self.bytes += len(data)
            return data

        def refused(*args, **kwargs):
            raise AssertionError("a frame request used a whole-file accessor of the store")

        monkeypatch.setattr(FilesystemStore, "open_range", counting)
        monkeypatch.setattr(FilesystemStore, "read_range", counting_read)
        for name in ("open_sync", "open_local", "read_into"):
            monkeypatch.setattr(FilesystemStore, name, refused)


@pytest.mark.parametrize("kind", ["native", "rle"])
async def test_thousand_frames_read_only_the_frame(client, monkeypatch, kind: str) -> None:
    count, rows = 1000, 64
    if kind == "native":
        ds = synth.dataset(rows=rows, columns=rows, frames=count)
        arr = np.frombuffer(ds.PixelData, "<u2").reshape(count, rows, rows)
        sizes = [rows * rows * 2] * count
    else:
        encoded, arr = _rle_frames(count, rows, rows)
        ds = _encapsulated(encoded, size=rows)
        sizes = [len(e) + len(e) % 2 for e in encoded]
    data = synth.encode(ds)
    assert len(data) > 1_000_000 if kind == "native" else len(data) > 100 * max(sizes)
    url = await _stow(client, data)
    meter = ReadMeter(monkeypatch)
    for number in (1, 500, 1000):
        meter.bytes = 0
        ((_, frame),) = await _frames(client, url, str(number))
        assert sizes[number - 1] <= meter.bytes <= 2 * sizes[number - 1], (meter.bytes, sizes[number - 1])
        if kind == "native":
            assert frame == arr[number - 1].tobytes()
        else:
            assert np.array_equal(_decode_alone(ds, frame), arr[number - 1])


# -- bulk data byte ranges ---------------------------------------------------------------------------


@pytest.fixture
async def bulk(client) -> tuple[str, bytes]:
    """The PixelData BulkDataURI path of a 32x32 16-bit instance, and the value."""
    ds = synth.dataset(rows=32, columns=32)
    url = await _stow(client, synth.encode(ds))
    return f"{url}/bulk/7FE00010", ds.PixelData


@pytest.mark.parametrize(("spec", "start", "end"), [
    ("bytes=0-99", 0, 100), ("bytes=100-100", 100, 101), ("bytes=2000-", 2000, 2048),
    ("bytes=-10", 2038, 2048), ("bytes=2040-5000", 2040, 2048), ("bytes=-5000", 0, 2048),
    ("bytes = 10-19", 10, 20),
])
async def test_bulk_range(client, bulk, spec: str, start: int, end: int) -> None:
    path, value = bulk
    resp = await client.get(path, headers={"Range": spec})
    assert resp.status == 206, await resp.text()
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(value)}"
    assert await resp.read() == value[start:end]


async def test_bulk_range_multipart_when_asked(client, bulk) -> None:
    path, value = bulk
    resp = await client.get(path, headers={
        "Range": "bytes=10-29", "Accept": 'multipart/related; type="application/octet-stream"'})
    assert resp.status == 206
    ((headers, part),) = parse_multipart(await resp.read(), resp.headers["Content-Type"])
    assert part == value[10:30]
    assert headers["Content-Range"] == f"bytes 10-29/{len(value)}"


@pytest.mark.parametrize("spec", ["bytes=2048-", "bytes=5000-6000", "bytes=-0"])
async def test_bulk_range_not_satisfiable(client, bulk, spec: str) -> None:
    path, value = bulk
    resp = await client.get(path, headers={"Range": spec})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{len(value)}"


@pytest.mark.parametrize("spec", ["bytes=abc", "items=0-1", "bytes=20-10", "bytes=0-1,5-6", "bytes=-"])
async def test_bulk_range_ignored_when_invalid(client, bulk, spec: str) -> None:
    """RFC 9110 §14.2: a Range that is not a single valid byte range is ignored: 200, whole."""
    path, value = bulk
    resp = await client.get(path, headers={"Range": spec})
    assert resp.status == 200
    ((_, part),) = parse_multipart(await resp.read(), resp.headers["Content-Type"])
    assert part == value


async def test_bulk_range_of_big_endian_file(client) -> None:
    """Bulk values of big-endian files are parsed out (offsets unusable) and served little endian."""
    values = np.arange(32 * 32, dtype="<u2")
    swapped = values.astype(">u2").tobytes()
    ds = _native(32, 32, 1, 16, swapped)
    url = await _stow(client, _big_endian(ds))
    resp = await client.get(f"{url}/bulk/7FE00010", headers={"Range": "bytes=-4"})
    assert resp.status == 206
    assert await resp.read() == values.tobytes()[-4:]


# -- dicomweb-client ---------------------------------------------------------------------------------


def test_dicomweb_client_frames_and_ranges(live_server) -> None:
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(url=live_server.url + "/dicom-web")
    native = synth.dataset(rows=16, columns=16, frames=4)
    encoded, arr = _rle_frames(4)
    compressed = _encapsulated(encoded)
    client.store_instances([native, compressed])

    def uids(ds: Dataset) -> dict[str, str]:
        return dict(study_instance_uid=ds.StudyInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
                    sop_instance_uid=ds.SOPInstanceUID)

    frames = client.retrieve_instance_frames(**uids(native), frame_numbers=[4, 2])
    size = 16 * 16 * 2
    assert frames == [native.PixelData[3 * size:], native.PixelData[size:2 * size]]
    frames = client.retrieve_instance_frames(**uids(native), frame_numbers=[1],
                                             media_types=(("application/octet-stream", EXPLICIT_LE),))
    assert frames == [native.PixelData[:size]]
    frames = client.retrieve_instance_frames(**uids(compressed), frame_numbers=[3, 1])
    assert frames == [encoded[2], encoded[0]]
    frames = client.retrieve_instance_frames(**uids(compressed), frame_numbers=[2],
                                             media_types=(("image/dicom-rle", RLELossless),))
    assert frames == [encoded[1]]
    frames = client.retrieve_instance_frames(**uids(compressed), frame_numbers=[2],
                                             media_types=(("application/octet-stream", EXPLICIT_LE),))
    assert frames == [arr[1].astype("<u2").tobytes()]
    meta = client.retrieve_instance_metadata(**uids(native))
    # dicomweb-client sends "Host: 127.0.0.1" without the port, so the URI it gets has none.
    uri = live_server.url + urlsplit(meta["7FE00010"]["BulkDataURI"]).path
    assert client.retrieve_bulkdata(uri, byte_range=(16, 31)) == [native.PixelData[16:32]]
    assert client.retrieve_bulkdata(uri) == [native.PixelData]
