"""WADO-RS transcoding (PS3.18 §8.7.3.4, §8.7.8.2): instances served in the transfer syntax the
client asks for, checked by decoding what comes back with pydicom; and the frame functions the
frames and rendering services use (archive/pixels/transcode.py).

Reference pixels are pydicom's decode of the original with the same plugins the archive uses
(pylibjpeg, pyjpegls, pydicom's own, Pillow — not GDCM, which aborts the process on some input):
lossy JPEG decoders differ by a few levels between libraries, so "exact" needs the same one.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dicomweb_client import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from archive.pixels import transcode
from archive.pixels.transcode import (
    Acceptable,
    NotTranscodable,
    candidates,
    check_conversion,
    decode_frame,
    decoded_photometric,
    encode_frame,
)
from tests.conftest import LiveServer, multipart
from tests.samples import SHARED_SAMPLES, Sample, shared_available, storable
from tests.test_roundtrip import parse_multipart

LOSSLESS_TARGETS = (RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1)
LOSSY_TARGETS = (JPEG2000, JPEGBaseline8Bit)
# Lossy targets: what the archive's settings (JPEG quality 90 with 4:2:2 chroma, JPEG 2000 at
# 5:1) must at least give on real images, relative to the image's own value range: a peak
# signal-to-noise ratio of 30 dB and a mean absolute error under 2 % of the range (the worst
# sample, a 64x64 noisy MR, gives 33.7 dB and 1.6 %; a wrong colour space or bit depth gives
# under 15 dB).
MIN_PSNR_DB = 30.0
MAX_MEAN_ERROR = 0.02

warnings.filterwarnings("ignore", module="pydicom")


def accept(*syntaxes: str) -> str:
    return ", ".join(f'multipart/related; type="application/dicom"; transfer-syntax={ts}' for ts in syntaxes)


def reference_pixels(ds: Dataset) -> np.ndarray[Any, Any]:
    """pydicom's decode of ``ds`` with the plugins the archive uses, in its order."""
    ts = ds.file_meta.TransferSyntaxUID
    if not ts.is_compressed:
        return ds.pixel_array
    errors = []
    for plugin in transcode._decoding_plugins(ts):
        try:
            return get_decoder(ts).as_array(ds, decoding_plugin=plugin)[0]
        except Exception as exc:  # the archive moves on to the next plugin too
            errors.append(exc)
    raise AssertionError(f"no plugin decodes it: {errors}")


def psnr_and_mean_error(got: np.ndarray[Any, Any], ref: np.ndarray[Any, Any]) -> tuple[float, float]:
    """PSNR (dB) and mean absolute error, both relative to the reference's value range."""
    diff = got.astype(np.float64) - ref.astype(np.float64)
    span = max(float(ref.max()) - float(ref.min()), 1.0)
    mse = float(np.mean(diff ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(span ** 2 / mse)
    return psnr, float(np.mean(np.abs(diff))) / span


async def stow(client, files: list[bytes]) -> None:
    body, ctype = multipart(files)
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 200, await resp.text()


def instance_path(ds: Dataset) -> str:
    return (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


async def retrieve(client, path: str, accept_header: str | None) -> list[tuple[str, Dataset, bytes]]:
    """(transfer syntax of the part's Content-Type, data set, raw part) of each part."""
    resp = await client.get(path, headers={"Accept": accept_header} if accept_header else {})
    assert resp.status == 200, (resp.status, await resp.text())
    out = []
    for headers, data in parse_multipart(await resp.read(), resp.headers["Content-Type"]):
        ctype = headers["Content-Type"].replace('"', "")
        assert ctype.startswith("application/dicom; transfer-syntax=")
        assert int(headers["Content-Length"]) == len(data)
        ds = dcmread(io.BytesIO(data))
        part_ts = ctype.split("transfer-syntax=")[1]
        assert ds.file_meta.TransferSyntaxUID == part_ts  # the header names what was sent
        out.append((part_ts, ds, data))
    return out


def by_name(name: str) -> Path:
    path = SHARED_SAMPLES / name
    if not path.is_file():
        pytest.skip(f"needs the shared sample {name}")
    return path


# -- every sample to Explicit VR Little Endian --------------------------------------------------


def _pixel_samples() -> list[Sample]:
    """The storable samples with Pixel Data: the expected rejections (tests/samples.py) are not
    stored, and instances without Pixel Data have their own test (test_non_image_instances)."""
    out = []
    for s in storable():
        ds = dcmread(s.path, stop_before_pixels=False, defer_size=256, force=True)
        if "PixelData" in ds:
            out.append(s)
    return out


# Stored fine, but pydicom has no decoder for them (retired JPEG processes 6-8 and 10-12,
# Deflated Image Frame Compression): only served as stored; asked in another syntax, a 406.
UNDECODABLE_TS = {"1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55", "1.2.840.10008.1.2.8.1"}
# Attributes a transcode may change (Image Pixel description, lossy flags, File Meta, the
# group lengths it drops, the Extended Offset Table of encapsulated data).
_MAY_CHANGE = {0x00280004, 0x00280006, 0x00280008, 0x00282110, 0x7FE00010, 0x7FE00001, 0x7FE00002}


@pytest.mark.parametrize("sample", _pixel_samples(), ids=lambda s: s.name)
async def test_every_sample_to_explicit_vr_little_endian(client, sample: Sample) -> None:
    data = sample.path.read_bytes()
    original = dcmread(io.BytesIO(data))
    await stow(client, [data])
    path = instance_path(original)
    source = original.file_meta.TransferSyntaxUID
    if source in UNDECODABLE_TS:
        resp = await client.get(path, headers={"Accept": accept(ExplicitVRLittleEndian)})
        assert resp.status == 406
        assert "cannot be decoded" in await resp.text()
        return
    ((ts, back, raw),) = await retrieve(client, path, accept(ExplicitVRLittleEndian))
    assert ts == ExplicitVRLittleEndian
    assert back.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(back.pixel_array, reference_pixels(original))
    if source in transcode.TARGETS and not transcode.is_lossy(source) and not transcode.is_native(source) \
            and transcode.check_conversion(ExplicitVRLittleEndian, source, _meta_of(back)) is None:
        # ... and back: the native result encoded again in the stored syntax gives the same pixels.
        again = dcmread(io.BytesIO(transcode.transcode_file(io.BytesIO(raw), source)))
        assert again.file_meta.TransferSyntaxUID == source
        assert np.array_equal(again.pixel_array, back.pixel_array)
    if source.is_compressed and original.SamplesPerPixel == 3:
        assert back.PhotometricInterpretation == "RGB"  # decoded YCbCr is sent as RGB
    elif source.is_compressed:
        assert back.PhotometricInterpretation == original.PhotometricInterpretation
    # Everything else is the same data set.
    kept = {e.tag for e in original if e.tag.element != 0 and e.tag not in _MAY_CHANGE}
    assert kept <= {e.tag for e in back}
    for tag in kept:
        elem = original[tag]
        if elem.VR == "SQ" or elem.VR != back[tag].VR:
            continue
        value = elem.value
        if source == ExplicitVRBigEndian and elem.VR in transcode._WORD:  # words now little endian
            value = transcode._swap(value, transcode._WORD[elem.VR])
        assert value == back[tag].value, elem


def _meta_of(ds: Dataset) -> dict[str, Any]:
    return ds.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda _: "")


# -- representative samples to every target ----------------------------------------------------

REPRESENTATIVE = [
    "multiframe/MR_heart_16frames_explicitLE.dcm",  # 8-bit monochrome, 16 frames
    "chest-xray/DX_thorax_highdicom.dcm",  # 8-bit MONOCHROME1, odd width
    "transfer-syntax/CT_LittleEndianExplicit.dcm",  # 16-bit signed CT
    "transfer-syntax/CT_JPEG2000LosslessOnly.dcm",  # the same CT, compressed lossless
    "us/US_ALOKA_16bit_implicitLE.dcm",  # 16-bit palette colour
    "color/TestPattern_RGB.dcm",  # RGB
    "us/US_YBR_FULL_422_explicitLE.dcm",  # native YBR_FULL_422 (becomes RGB)
    "multiframe/EnhancedMR_emri_small_10f_RLE.dcm",  # 16-bit multi-frame, RLE
]


@pytest.mark.skipif(not shared_available(), reason="needs the shared DICOM samples")
@pytest.mark.parametrize("name", REPRESENTATIVE)
async def test_representative_samples_to_each_target(client, name: str) -> None:
    data = by_name(name).read_bytes()
    original = dcmread(io.BytesIO(data))
    ref = reference_pixels(original)
    await stow(client, [data])
    path = instance_path(original)
    meta = transcode._pixel_meta(original)
    served = []
    for target in LOSSLESS_TARGETS + LOSSY_TARGETS + (ImplicitVRLittleEndian,):
        reason = check_conversion(original.file_meta.TransferSyntaxUID, target, meta)
        if reason:  # refused: a 406 that says why
            resp = await client.get(path, headers={"Accept": accept(target)})
            assert resp.status == 406, (target, await resp.text())
            assert reason in await resp.text()
            continue
        ((ts, back, _),) = await retrieve(client, path, accept(target))
        assert ts == target
        got = reference_pixels(back)
        assert got.shape == ref.shape, target
        if target in LOSSY_TARGETS:
            psnr, mean_error = psnr_and_mean_error(got, ref)
            assert psnr >= MIN_PSNR_DB and mean_error <= MAX_MEAN_ERROR, (target, psnr, mean_error)
            assert back.LossyImageCompression == "01"
        else:
            assert np.array_equal(got, ref), target
        if back.SamplesPerPixel == 3 and target != ImplicitVRLittleEndian:
            assert back.PhotometricInterpretation == {
                JPEG2000Lossless: "YBR_RCT", JPEG2000: "YBR_ICT", JPEGBaseline8Bit: "YBR_FULL_422"
            }.get(target, "RGB")
        served.append(target)
    # Each sample gets at least the lossless targets its bit depth allows.
    assert len(served) >= 3, served


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.skipif(not shared_available(), reason="needs the shared DICOM samples")
@pytest.mark.parametrize(("name", "target", "why"), [
    ("transfer-syntax/CT_JPEGProcess1.dcm", RLELossless, "lossy compressed"),
    ("transfer-syntax/CT_JPEGProcess1.dcm", JPEGLSLossless, "lossy compressed"),
    ("transfer-syntax/CT_JPEG2000.dcm", JPEG2000Lossless, "lossy compressed"),
    ("multiframe/XA_96frames_JPEG.dcm", JPEGLosslessSV1, "lossy compressed"),
    ("transfer-syntax/CT_LittleEndianExplicit.dcm", JPEGBaseline8Bit, "8-bit"),
    ("transfer-syntax/CT_JPEG2000LosslessOnly.dcm", JPEGBaseline8Bit, "8-bit"),
    ("seg/SEG_liver_3frames.dcm", RLELossless, "1-bit"),
    ("color/TestPattern_Palette.dcm", JPEGBaseline8Bit, "palette"),
    ("non-image/SR_basic_text_no_pixel_data.dcm", JPEG2000Lossless, "no Pixel Data"),
    ("transfer-syntax/CT_LittleEndianExplicit.dcm", "1.2.840.10008.1.2.4.100", "not supported"),
])
async def test_impossible_conversions_are_406(client, name: str, target: str, why: str) -> None:
    data = by_name(name).read_bytes()
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    await stow(client, [data])
    resp = await client.get(instance_path(ds), headers={"Accept": accept(target)})
    assert resp.status == 406
    text = await resp.text()
    assert why in text and ds.SOPInstanceUID in text, text


async def test_malformed_transfer_syntax_is_400(client) -> None:
    from tests import synth

    ds = synth.dataset()
    await stow(client, [synth.encode(ds)])
    resp = await client.get(instance_path(ds), headers={"Accept": accept("1.2.abc")})
    assert resp.status == 400
    assert "transfer-syntax" in await resp.text()


# -- negotiation: several ranges, defaults, non-image instances ---------------------------------


@pytest.mark.skipif(not shared_available(), reason="needs the shared DICOM samples")
async def test_choice_among_several_transfer_syntaxes(client) -> None:
    ct = dcmread(by_name("transfer-syntax/CT_LittleEndianExplicit.dcm"))
    await stow(client, [by_name("transfer-syntax/CT_LittleEndianExplicit.dcm").read_bytes()])
    path = instance_path(ct)
    q = 'multipart/related; type="application/dicom"; transfer-syntax={};q={}'
    cases = [
        # The stored syntax wins whenever it is acceptable, whatever its q.
        (f"{q.format(JPEG2000Lossless, 1)}, {q.format(ExplicitVRLittleEndian, 0.2)}", ExplicitVRLittleEndian),
        (f"{q.format(JPEG2000Lossless, 1)}, {q.format('*', 0.1)}", ExplicitVRLittleEndian),
        # Else the first acceptable by q (JPEG baseline cannot hold 16 bits: skipped).
        (f"{q.format(RLELossless, 0.5)}, {q.format(JPEGLSLossless, 0.9)}", JPEGLSLossless),
        (f"{q.format(JPEGBaseline8Bit, 1)}, {q.format(JPEGLosslessSV1, 0.8)}, {q.format(RLELossless, 0.7)}",
         JPEGLosslessSV1),
    ]
    for header, expected in cases:
        ((ts, back, _),) = await retrieve(client, path, header)
        assert ts == expected, header
        assert np.array_equal(reference_pixels(back), ct.pixel_array)


@pytest.mark.skipif(not shared_available(), reason="needs the shared DICOM samples")
async def test_default_transfer_syntax(client) -> None:
    """No transfer-syntax parameter: Explicit VR Little Endian, except that lossy compressed
    instances are sent as stored (PS3.18 §8.7.3.4)."""
    rle = by_name("transfer-syntax/CT_RLELossless.dcm").read_bytes()
    jpeg = by_name("multiframe/US_multiframe_30f_JPEG_YBR.dcm").read_bytes()
    await stow(client, [rle, jpeg])
    for header in (None, "*/*", 'multipart/related; type="application/dicom"', "application/dicom"):
        ((ts, back, _),) = await retrieve(client, instance_path(dcmread(io.BytesIO(rle))), header)
        assert ts == ExplicitVRLittleEndian, header
        ((ts, back, raw),) = await retrieve(client, instance_path(dcmread(io.BytesIO(jpeg))), header)
        assert ts == JPEGBaseline8Bit and raw == jpeg, header
    # Explicitly asked, the lossy instance is decoded.
    ((ts, back, _),) = await retrieve(client, instance_path(dcmread(io.BytesIO(jpeg))),
                                      accept(ExplicitVRLittleEndian))
    assert ts == ExplicitVRLittleEndian and back.PhotometricInterpretation == "RGB"


@pytest.mark.skipif(not shared_available(), reason="needs the shared DICOM samples")
async def test_non_image_instances(client) -> None:
    """No Pixel Data: uncompressed syntaxes only; a compressed one falls back to Explicit VR
    Little Endian when that is acceptable too, else 406."""
    data = by_name("non-image/SR_basic_text_no_pixel_data.dcm").read_bytes()
    sr = dcmread(io.BytesIO(data))
    await stow(client, [data])
    path = instance_path(sr)
    ((ts, back, _),) = await retrieve(client, path, accept(ImplicitVRLittleEndian))
    assert ts == ImplicitVRLittleEndian and back.ContentSequence == sr.ContentSequence
    ((ts, _, raw),) = await retrieve(client, path, accept(JPEG2000Lossless, ExplicitVRLittleEndian))
    assert ts == ExplicitVRLittleEndian and raw == data
    resp = await client.get(path, headers={"Accept": accept(JPEG2000Lossless)})
    assert resp.status == 406


# -- a series of mixed transfer syntaxes --------------------------------------------------------

MIXED = ["CT_LittleEndianExplicit", "CT_LittleEndianImplicit", "CT_BigEndianExplicit",
         "CT_DeflatedExplicitVRLittleEndian", "CT_RLELossless", "CT_JPEG2000LosslessOnly",
         "CT_JPEGLSLossless", "CT_JPEGProcess14SV1", "CT_JPEGProcess14"]


def _mixed_series() -> tuple[Dataset, list[bytes], list[str]]:
    """The one CT slice in nine transfer syntaxes, as nine instances of one series (new SOP
    Instance UIDs; each file keeps its encoding)."""
    files, sops = [], []
    first = None
    for n, name in enumerate(MIXED, start=1):
        ds = dcmread(by_name(f"transfer-syntax/{name}.dcm"))
        first = first or ds
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n
        buf = io.BytesIO()
        ds.save_as(buf)
        files.append(buf.getvalue())
        sops.append(ds.SOPInstanceUID)
    assert first is not None
    return first, files, sops


@pytest.mark.skipif(not shared_available(), reason="needs the shared DICOM samples")
async def test_series_of_mixed_transfer_syntaxes(client) -> None:
    first, files, sops = _mixed_series()
    stored_ts = [dcmread(io.BytesIO(f), stop_before_pixels=True).file_meta.TransferSyntaxUID for f in files]
    assert {ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian, JPEGLossless} <= set(stored_ts)
    await stow(client, files)
    path = f"/dicom-web/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
    ref = first.pixel_array
    for target in (ExplicitVRLittleEndian, JPEGLSLossless):
        parts = await retrieve(client, path, accept(target))
        assert [back.SOPInstanceUID for _, back, _ in parts] == sops
        for ts, back, _ in parts:
            assert ts == target
            assert np.array_equal(reference_pixels(back), ref), back.SOPInstanceUID
    # RLE or Explicit VR Little Endian: those stored so are sent as they are, the rest in RLE.
    parts = await retrieve(client, path, accept(RLELossless, ExplicitVRLittleEndian))
    for (ts, back, raw), original, stored in zip(parts, files, stored_ts, strict=True):
        assert ts == (stored if stored in (RLELossless, ExplicitVRLittleEndian) else RLELossless)
        if ts == stored:
            assert raw == original
        assert np.array_equal(reference_pixels(back), ref)


# -- failures at run time -----------------------------------------------------------------------


def _corrupt_code_stream(root: Path, sop: str) -> bytes:
    """Zero the start of the JPEG 2000 code stream of a stored file (its framing stays valid:
    only the codec can tell); the file as it now is."""
    (path,) = list((root / "files" / "data").glob(f"*/*/{sop}.*.dcm"))
    raw = bytearray(path.read_bytes())
    soc = raw.index(b"\xff\x4f\xff\x51")
    raw[soc:soc + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    return bytes(raw)


@pytest.mark.skipif(not shared_available(), reason="needs the shared DICOM samples")
async def test_codec_failure_never_serves_a_corrupted_file(client, tmp_path: Path) -> None:
    j2k = dcmread(by_name("multiframe/EnhancedMR_emri_small_10f_J2KR.dcm"))
    rle = dcmread(by_name("transfer-syntax/CT_RLELossless.dcm"))
    rle.SeriesInstanceUID = j2k.SeriesInstanceUID
    rle.StudyInstanceUID = j2k.StudyInstanceUID
    rle.SeriesNumber, j2k.SeriesNumber, rle.InstanceNumber, j2k.InstanceNumber = 1, 1, 1, 2
    files = []
    for ds in (rle, j2k):
        buf = io.BytesIO()
        ds.save_as(buf)
        files.append(buf.getvalue())
    await stow(client, files)
    stored = _corrupt_code_stream(tmp_path, j2k.SOPInstanceUID)
    # One instance: a 406 before anything is sent.
    resp = await client.get(instance_path(j2k), headers={"Accept": accept(ExplicitVRLittleEndian)})
    assert resp.status == 406
    assert "could not be decoded" in await resp.text()
    # The stored syntax, when acceptable, is sent as stored (the archive does not vouch for it).
    ((ts, _, raw),) = await retrieve(client, instance_path(j2k), accept(RLELossless, JPEG2000Lossless))
    assert ts == JPEG2000Lossless and raw == stored
    # In a series, after the first part: the response breaks off, no corrupted part.
    path = f"/dicom-web/studies/{j2k.StudyInstanceUID}/series/{j2k.SeriesInstanceUID}"
    resp = await client.get(path, headers={"Accept": accept(ExplicitVRLittleEndian)})
    assert resp.status == 200
    with pytest.raises(Exception) as broken:  # noqa: PT011 - aiohttp's payload error, by version
        await resp.read()
    assert "Payload" in type(broken.value).__name__ or "Connection" in type(broken.value).__name__


async def test_codec_failure_falls_back_to_the_next_acceptable_syntax(client, monkeypatch) -> None:
    from tests import synth

    ds = synth.dataset(rows=40, columns=40)
    await stow(client, [synth.encode(ds)])
    real = transcode.transcode_file

    def failing_rle(fp, target):  # an encoder failing at run time, not by rule
        if target == RLELossless:
            raise NotTranscodable("RLE encoder failed")
        return real(fp, target)

    monkeypatch.setattr(transcode, "transcode_file", failing_rle)
    ((ts, back, _),) = await retrieve(client, instance_path(ds), accept(RLELossless, JPEGLSLossless))
    assert ts == JPEGLSLossless
    assert np.array_equal(reference_pixels(back), ds.pixel_array)
    resp = await client.get(instance_path(ds), headers={"Accept": accept(RLELossless)})
    assert resp.status == 406
    assert "RLE encoder failed" in await resp.text()


# -- a real peer --------------------------------------------------------------------------------


@pytest.mark.skipif(not shared_available(), reason="needs the shared DICOM samples")
def test_dicomweb_client_retrieves_transcoded(live_server: LiveServer) -> None:
    client = DICOMwebClient(url=live_server.url + "/dicom-web")
    names = ["transfer-syntax/CT_JPEG2000LosslessOnly.dcm", "color/TestPattern_JPEG-LS-Lossless.dcm"]
    datasets = [dcmread(by_name(n)) for n in names]
    client.store_instances(datasets)
    for ds in datasets:
        uids = {"study_instance_uid": ds.StudyInstanceUID, "series_instance_uid": ds.SeriesInstanceUID,
                "sop_instance_uid": ds.SOPInstanceUID}
        back = client.retrieve_instance(**uids, media_types=(("application/dicom", ExplicitVRLittleEndian),))
        assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(back.pixel_array, reference_pixels(ds))
        back = client.retrieve_instance(**uids, media_types=(("application/dicom", RLELossless),))
        assert back.file_meta.TransferSyntaxUID == RLELossless
        assert np.array_equal(reference_pixels(back), reference_pixels(ds))
        # dicomweb-client's default is transfer-syntax=*: as stored.
        back = client.retrieve_instance(**uids)
        assert back.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID


# -- the frame functions ------------------------------------------------------------------------


@dataclass
class Framed:
    ds: Dataset
    meta: dict[str, Any]
    frames: list[bytes]


def _framed(name: str) -> Framed:
    ds = dcmread(by_name(name))
    nr = int(ds.get("NumberOfFrames", 1))
    return Framed(ds, transcode._pixel_meta(ds), list(generate_frames(ds.PixelData, number_of_frames=nr)))


@pytest.mark.skipif(not shared_available(), reason="needs the shared DICOM samples")
@pytest.mark.parametrize("name", [
    "multiframe/US_multiframe_30f_JPEG_YBR.dcm", "multiframe/EnhancedMR_emri_small_10f_J2KR.dcm",
    "color/TestPattern_JPEG-LS-Lossless.dcm", "transfer-syntax/CT_JPEGProcess14SV1.dcm",
    "multiframe/OB_2frame_RLE.dcm", "seg/SEG_liver_nonbyte_aligned_J2K.dcm",
])
def test_decode_frame_matches_pydicom(name: str) -> None:
    f = _framed(name)
    ts = f.ds.file_meta.TransferSyntaxUID
    ref = reference_pixels(f.ds).reshape(len(f.frames), -1)
    photometric = decoded_photometric(f.meta, ts)
    for i, frame in enumerate(f.frames):
        native = decode_frame(frame, f.meta, ts, i)
        if f.ds.BitsAllocated == 1:
            bits = np.unpackbits(np.frombuffer(native, np.uint8), bitorder="little")[:ref.shape[1]]
            assert np.array_equal(bits, ref[i]), i
            continue
        assert np.array_equal(np.frombuffer(native, dtype=ref.dtype), ref[i]), i
        # And back: encode_frame of the decoded frame is lossless in every lossless target.
        for target in (RLELossless, JPEGLSLossless, JPEGLosslessSV1, JPEG2000Lossless):
            if check_conversion(ts, target, f.meta) is not None:
                continue
            code = encode_frame(native, f.meta, target, source_ts=ts)
            again = decode_frame(code, {**f.meta, "00280004": {"Value": [
                transcode._encoded_photometric(target, photometric)]}}, target)
            assert again == native, (i, target)
    if f.ds.SamplesPerPixel == 3:
        assert photometric == "RGB"


def test_frame_functions_on_native_frames() -> None:
    from tests import synth

    ds = synth.dataset(rows=40, columns=50)
    meta = transcode._pixel_meta(ds)
    native = ds.PixelData
    assert decode_frame(native, meta, ExplicitVRLittleEndian) == native
    swapped = np.frombuffer(native, "<u2").astype(">u2").tobytes()
    assert decode_frame(swapped, meta, ExplicitVRBigEndian) == native
    for target in LOSSLESS_TARGETS:
        code = encode_frame(native, meta, target)
        assert decode_frame(code, meta, target) == native, target
    assert encode_frame(native, meta, ExplicitVRLittleEndian) == native
    with pytest.raises(NotTranscodable, match="8-bit"):
        encode_frame(native, meta, JPEGBaseline8Bit)
    with pytest.raises(NotTranscodable, match="could not be decoded"):
        decode_frame(b"\xff\xd8garbage", meta, JPEGLSLossless, 3)
    # Planar configuration 1 (colour by plane) in, planar configuration 0 out.
    rgb = np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)
    planar_meta = {**meta, "00280002": {"Value": [3]}, "00280004": {"Value": ["RGB"]},
                   "00280006": {"Value": [1]}, "00280100": {"Value": [8]}, "00280101": {"Value": [8]}}
    code = encode_frame(rgb.transpose(2, 0, 1).tobytes(), planar_meta, RLELossless)
    by_pixel = {**planar_meta, "00280006": {"Value": [0]}}
    assert decode_frame(code, by_pixel, RLELossless) == rgb.tobytes()


def test_check_conversion_and_candidates_rules() -> None:
    mono16 = {"00280002": {"Value": [1]}, "00280004": {"Value": ["MONOCHROME2"]},
              "00280010": {"Value": [512]}, "00280011": {"Value": [512]},
              "00280100": {"Value": [16]}, "00280101": {"Value": [12]}, "7FE00010": {}}
    assert check_conversion(RLELossless, ExplicitVRLittleEndian, mono16) is None
    assert check_conversion(JPEGBaseline8Bit, ExplicitVRLittleEndian, mono16) is None
    assert "lossy" in check_conversion(JPEGBaseline8Bit, JPEGLSLossless, mono16)
    assert check_conversion(JPEG2000Lossless, JPEG2000, mono16) is None  # lossless to lossy
    assert "8-bit" in check_conversion(ExplicitVRLittleEndian, JPEGBaseline8Bit, mono16)
    assert "cannot be decoded" in check_conversion("1.2.840.10008.1.2.4.53", ExplicitVRLittleEndian, mono16)
    huge = {**mono16, "00280008": {"Value": [20000]}}  # 10 GB decoded: not as native
    assert "too large" in check_conversion(JPEG2000Lossless, ExplicitVRLittleEndian, huge)
    # PS3.18 §8.7.3.4: by default, a lossy or too large instance goes as stored.
    default = Acceptable((ExplicitVRLittleEndian,), default=True)
    assert candidates(JPEGBaseline8Bit, mono16, default) == [JPEGBaseline8Bit]
    assert candidates(JPEG2000Lossless, huge, default) == [JPEG2000Lossless]
    assert candidates(JPEG2000Lossless, mono16, default) == [ExplicitVRLittleEndian]
    assert candidates("1.2.840.10008.1.2.4.53", mono16, default) == ["1.2.840.10008.1.2.4.53"]
    with pytest.raises(NotTranscodable, match="too large"):
        candidates(JPEG2000Lossless, huge, Acceptable((ExplicitVRLittleEndian,)))
    # The stored syntax first; else all allowed ones in order (fallbacks).
    both = Acceptable((JPEGBaseline8Bit, RLELossless, JPEGLSLossless))
    assert candidates(JPEGLSLossless, mono16, both) == [JPEGLSLossless]
    assert candidates(ExplicitVRLittleEndian, mono16, both) == [RLELossless, JPEGLSLossless]
