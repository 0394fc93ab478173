"""Transcoding: an instance, or one frame, from its stored transfer syntax into another
(PS3.18 §8.7.3.4 and §8.7.8.2: the transfer syntax of a retrieved instance; PS3.5 §8 and
Annex A: how each transfer syntax encodes pixel data).

Decoding goes through pydicom's pixel decoders with the pylibjpeg, pyjpegls, Pillow and pydicom
plugins, never GDCM: GDCM's codecs abort the whole process (C++ ``terminate``) on some input,
e.g. an 8-bit JPEG Lossless frame with Bits Stored 1, or an RLE frame of odd width. Encoding
uses pydicom's encoders where it has one (RLE Lossless with pylibjpeg-rle, JPEG-LS Lossless
with pyjpegls, JPEG 2000 with openjpeg), the archive's own JPEG Lossless SV1 encoder
(:mod:`archive.pixels.jpeg_lossless`; GDCM's refuses 8-bit frames of odd width) and Pillow for
JPEG Baseline. Everything here is blocking CPU work: callers on the event loop run it in an
executor.

Rules (the conformance statement's "Transcoding" section says the same):

* uncompressed targets (Explicit and Implicit VR Little Endian) accept any source pydicom can
  decode; the decoded colour is what pydicom gives (YCbCr becomes RGB, see
  :func:`decoded_photometric`);
* a lossy source (JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000 and HTJ2K lossy…) is
  never re-encoded into a lossless compressed syntax: that would present lossy pixels as the
  original ones;
* each compressed target takes only what PS3.5 §8.2 allows it (bit depths, photometric
  interpretations), e.g. JPEG Baseline holds 8-bit unsigned samples only;
* an instance without Pixel Data (7FE0,0010) is only served uncompressed.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.datadict import DicomDictionary, dictionary_VR
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder, get_encoder
from pydicom.pixels.utils import pack_bits
from pydicom.uid import (
    JPEG2000,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from archive.pixels import jpeg_lossless
from archive.pixels.geometry import Geometry

T = TypeVar("T")

# -- transfer syntaxes --------------------------------------------------------------------------

NATIVE_TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# What a retrieve may ask for, uncompressed first.
TARGETS = (*NATIVE_TARGETS, RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1,
           JPEG2000, JPEGBaseline8Bit)
LOSSY_TARGETS = (JPEG2000, JPEGBaseline8Bit)

# Compressed transfer syntaxes whose pixel data is the original, bit for bit (PS3.5 §8.2, §10).
# Every other compressed syntax counts as lossy, even JPEG 2000 (.91), which may hold a
# reversible code stream: the syntax does not promise it.
_LOSSLESS_COMPRESSED = frozenset({
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.8.1",
})
_NATIVE_SOURCES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                             DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian})

# Quality of the lossy targets. JPEG: libjpeg quality 90 with 4:2:2 chroma (YBR_FULL_422, the
# usual DICOM colour JPEG); JPEG 2000: 5:1 compression ratio, one quality layer (10:1 leaves small
# noisy MR frames at 27 dB PSNR; 5:1 keeps the samples above 33 dB, CT above 55 dB).
JPEG_QUALITY = 90
J2K_COMPRESSION_RATIO = 5.0

# PS3.5 §8.1.1: a native Pixel Data value has a 32-bit length (0xFFFFFFFF is "undefined").
_MAX_NATIVE = 0xFFFFFFFE


class NotTranscodable(Exception):
    """The conversion is not possible (refused by rule, or the codec failed); the message says why."""


def ts_name(uid: str) -> str:
    """A transfer syntax's name with its UID, for messages."""
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def is_native(ts: str) -> bool:
    """Uncompressed (native) pixel data, whatever the byte order or deflation."""
    return ts in _NATIVE_SOURCES


def is_lossy(ts: str) -> bool:
    """Whether pixel data in ``ts`` may have lost information (PS3.5 §8.2)."""
    return not is_native(ts) and ts not in _LOSSLESS_COMPRESSED


def _has_pixel_data(meta: dict[str, Any]) -> bool:
    return "7FE00010" in meta


def decoded_photometric(meta: dict[str, Any], transfer_syntax: str) -> str:
    """The Photometric Interpretation of what :func:`decode_frame` gives for this instance, and
    of what a transcode from ``transfer_syntax`` to an uncompressed syntax sends.

    pydicom converts YCbCr to RGB while decoding (its ``as_rgb`` default), and JPEG 2000's colour
    transforms (YBR_ICT, YBR_RCT) are undone by the codec, so every 3-sample YBR interpretation of
    a *compressed* source decodes to ``RGB``. Native sources are not decoded by
    :func:`decode_frame`, so they keep their interpretation."""
    g = Geometry.from_json(meta)
    if is_native(transfer_syntax) or g.samples_per_pixel != 3:
        return g.photometric
    if g.photometric.startswith("YBR_"):
        return "RGB"
    return g.photometric


def _native_length(g: Geometry) -> int:
    samples = 3 if g.photometric.startswith("YBR_") else g.samples_per_pixel
    bits = g.rows * g.columns * samples * g.bits_allocated * g.number_of_frames
    return (bits + 7) // 8


# -- what each target accepts -------------------------------------------------------------------


def _target_refusal(target: str, g: Geometry, photometric: str) -> str | None:
    """Why decoded pixels described by ``g`` (with ``photometric``) cannot go into the compressed
    ``target`` (PS3.5 §8.2.1-8.2.4 and the codecs' limits), or None."""
    name = ts_name(target)
    if g.bits_allocated == 1:
        return f"1-bit (bit-packed) pixel data cannot be encoded as {name}; it is served uncompressed"
    mono = photometric in ("MONOCHROME1", "MONOCHROME2")
    if g.samples_per_pixel == 1 and not (mono or photometric == "PALETTE COLOR"):
        return f"Photometric Interpretation {photometric} cannot be encoded as {name}"
    if g.samples_per_pixel == 3 and photometric != "RGB":
        return f"Photometric Interpretation {photometric} cannot be encoded as {name}"
    if g.samples_per_pixel not in (1, 3):
        return f"{g.samples_per_pixel} samples per pixel cannot be encoded as {name}"
    if g.pixel_representation == 1 and not mono:
        return f"signed {photometric} pixel data cannot be encoded as {name}"
    if photometric == "PALETTE COLOR" and target in LOSSY_TARGETS:
        return f"palette indices cannot be lossy compressed ({name})"
    bits = f"Bits Allocated {g.bits_allocated}, Bits Stored {g.bits_stored}"
    if target == JPEGBaseline8Bit:
        if g.bits_allocated != 8 or g.bits_stored > 8 or g.pixel_representation:
            return (f"{name} holds 8-bit unsigned samples only; this instance has {bits}"
                    f"{', signed' if g.pixel_representation else ''}")
    elif target in (JPEG2000Lossless, JPEG2000):
        if g.bits_allocated not in (8, 16, 24, 32) or g.bits_stored > 24 or \
                (photometric == "PALETTE COLOR" and g.bits_stored > 16):
            return f"{name} is encoded here for at most 24 bits stored; this instance has {bits}"
        if min(g.rows, g.columns) < 32:  # openjpeg's encoder needs 2^5 pixels for its 6 resolutions
            return f"{name} is encoded here for images of at least 32x32 pixels, not {g.rows}x{g.columns}"
    else:  # RLE, JPEG-LS, JPEG Lossless: 8 or 16 bits allocated (PS3.5 Tables 8.2.1-2, 8.2.2-1, 8.2.3-1)
        low = 2 if target == JPEGLSLossless else 1
        if g.bits_allocated not in (8, 16) or not low <= g.bits_stored <= 16:
            return f"{name} holds {low} to 16 bits stored in 8 or 16 allocated; this instance has {bits}"
        if target == JPEGLosslessSV1 and g.bits_allocated == 16 and g.bits_stored <= 8:
            # pydicom's decoders return such a stream (precision <= 8) as 8-bit samples and
            # fail on it: the result would be unreadable for pydicom-based clients.
            return f"{name} is not produced for 16 bits allocated with 8 or fewer stored ({bits})"
    return None


# Plugins in the order they are tried: GDCM is left out (see the module docstring).
_DECODING_PLUGINS = ("pylibjpeg", "pyjpegls", "pydicom", "pillow")
# Each target's encoder plugins, tried in turn: pydicom would try GDCM first for RLE, and GDCM
# aborts the process on frames of odd width; pylibjpeg-rle refuses 16-bit samples with 8 stored.
_ENCODING_PLUGINS = {RLELossless: ("pylibjpeg", "pydicom"), JPEGLSLossless: ("pyjpegls",),
                     JPEG2000Lossless: ("pylibjpeg",), JPEG2000: ("pylibjpeg",)}


def _decoding_plugins(source_ts: str) -> list[str]:
    """The decoder plugins to try for ``source_ts``, best first (empty: none installed)."""
    try:
        available = get_decoder(source_ts).available_plugins
    except NotImplementedError:
        return []
    return [p for p in _DECODING_PLUGINS if p in available]


def _decodable(source_ts: str) -> str | None:
    """Why pixel data in ``source_ts`` cannot be decoded here, or None."""
    if is_native(source_ts):
        return None
    try:
        get_decoder(source_ts)
    except NotImplementedError:
        return f"pixel data in {ts_name(source_ts)} cannot be decoded by this archive"
    if not _decoding_plugins(source_ts):
        return f"no decoder for {ts_name(source_ts)} is installed"
    return None


def check_conversion(source_ts: str, target_ts: str, meta: dict[str, Any]) -> str | None:
    """Why an instance stored in ``source_ts`` (``meta``: its DICOM JSON) cannot be served in
    ``target_ts``, or None when it can. Decided from the metadata alone, before any file is
    read; the codec may still fail on bad data (:class:`NotTranscodable` then)."""
    if target_ts == source_ts:
        return None
    if target_ts not in TARGETS:
        return (f"transcoding to {ts_name(target_ts)} is not supported (targets: "
                f"{', '.join(TARGETS)})")
    if not _has_pixel_data(meta):
        if target_ts in NATIVE_TARGETS:
            return None
        return (f"the instance has no Pixel Data (7FE0,0010), so it is not served as "
                f"{ts_name(target_ts)}; ask for Explicit VR Little Endian")
    reason = _decodable(source_ts)
    if reason:
        return reason
    g = Geometry.from_json(meta)
    if target_ts in NATIVE_TARGETS:
        if not is_native(source_ts) and _native_length(g) > _MAX_NATIVE:
            return (f"the decompressed pixel data ({_native_length(g)} bytes) is too large for "
                    f"{ts_name(target_ts)} (PS3.5 §8.1.1)")
        return None
    if is_lossy(source_ts) and target_ts not in LOSSY_TARGETS:
        return (f"the pixel data is stored lossy compressed ({ts_name(source_ts)}); it is not "
                f"re-encoded as lossless {ts_name(target_ts)}")
    return _target_refusal(target_ts, g, _photometric_to_encode(g))


def _photometric_to_encode(g: Geometry) -> str:
    """The Photometric Interpretation of the decoded pixels that go into an encoder: pydicom's
    decoders turn 3-sample YCbCr of any source (native YBR_FULL_422 too) into RGB."""
    return "RGB" if g.samples_per_pixel == 3 and g.photometric.startswith("YBR_") else g.photometric


# -- choosing what to send ----------------------------------------------------------------------


@dataclass(frozen=True)
class Acceptable:
    """The transfer syntaxes a retrieve request accepts for application/dicom (PS3.18 §8.7.3.7).

    ``syntaxes`` are in the request's preference order (q values). A media range without a
    transfer-syntax parameter adds Explicit VR Little Endian there and sets ``default``: then a
    lossy stored instance, or one too large for native encoding (PS3.18 §8.7.3.4), or one whose
    pixel data cannot be decoded here, is sent as stored. ``any`` is ``transfer-syntax=*``: as
    stored."""

    syntaxes: tuple[str, ...] = ()
    any: bool = False
    default: bool = False


def stored_acceptable(stored_ts: str, acceptable: Acceptable) -> bool:
    """Whether the stored file can be sent as it is (decided without the metadata)."""
    return (acceptable.any or stored_ts in acceptable.syntaxes
            or (acceptable.default and is_lossy(stored_ts)))


def candidates(stored_ts: str, meta: dict[str, Any], acceptable: Acceptable) -> list[str]:
    """The transfer syntaxes to send an instance in, best first: the stored one alone when it is
    acceptable (no transcoding), else every acceptable one that :func:`check_conversion` allows,
    in the request's order (the later ones are fallbacks should the codec fail).
    Raises :class:`NotTranscodable` naming the reasons when there is none."""
    if stored_acceptable(stored_ts, acceptable):
        return [stored_ts]
    found, reasons = [], []
    for ts in acceptable.syntaxes:
        reason = check_conversion(stored_ts, ts, meta)
        if reason is None:
            found.append(ts)
        elif reason not in reasons:
            reasons.append(reason)
    if found:
        return found
    if acceptable.default:
        # Explicit VR Little Endian was refused: the pixel data is too large for it (PS3.18
        # §8.7.3.4 then allows the stored syntax) or cannot be decoded here (sent as stored too,
        # rather than failing a request that named no transfer syntax).
        return [stored_ts]
    raise NotTranscodable("; ".join(reasons) or f"stored as {ts_name(stored_ts)}")


# -- arrays -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pixels:
    """The Image Pixel description of decoded frames (PS3.3 C.7.6.3)."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str

    def geometry(self, frames: int = 1) -> Geometry:
        return Geometry(self.rows, self.columns, self.samples, self.bits_allocated, self.bits_stored,
                        self.pixel_representation, self.photometric, 0, frames)

    def options(self, photometric: str | None = None) -> dict[str, Any]:
        """Keyword options of pydicom's encoders and decoders for one frame."""
        return {"rows": self.rows, "columns": self.columns, "samples_per_pixel": self.samples,
                "bits_allocated": self.bits_allocated, "bits_stored": self.bits_stored,
                "pixel_representation": self.pixel_representation,
                "photometric_interpretation": photometric or self.photometric,
                "planar_configuration": 0, "number_of_frames": 1}


def _dtype(bits_allocated: int, signed: int) -> np.dtype[Any]:
    size = {1: 1, 8: 1, 16: 2, 32: 4}.get(bits_allocated)
    if size is None:
        raise NotTranscodable(f"Bits Allocated {bits_allocated} is not supported")
    return np.dtype(f"<{'i' if signed else 'u'}{size}")


def _native_bytes(arr: np.ndarray[Any, Any], bits_allocated: int) -> bytes:
    """One or more decoded frames as native little-endian Pixel Data bytes (bit-packed for 1-bit)."""
    if bits_allocated == 1:
        return pack_bits(arr.ravel(), pad=False)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _clean_bits(arr: np.ndarray[Any, Any], px: _Pixels) -> np.ndarray[Any, Any]:
    """Clear (or sign-extend) the bits above Bits Stored, as pydicom does on decode (PS3.5 §8.1.1)."""
    shift = arr.dtype.itemsize * 8 - px.bits_stored
    if shift <= 0 or px.bits_allocated == 1:
        return arr
    arr = np.left_shift(arr, shift)
    return np.right_shift(arr, shift)


def _ybr_to_rgb(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    from pydicom.pixels.processing import convert_color_space

    return convert_color_space(arr, "YBR_FULL", "RGB")


# -- encoders -----------------------------------------------------------------------------------


def _encoded_photometric(target: str, photometric: str) -> str:
    """The Photometric Interpretation of RGB/monochrome pixels once encoded in ``target``
    (PS3.5 §8.2.1, §8.2.4: JPEG colour is YCbCr, JPEG 2000 applies its colour transform)."""
    if photometric != "RGB":
        return photometric
    return {JPEGBaseline8Bit: "YBR_FULL_422", JPEG2000Lossless: "YBR_RCT",
            JPEG2000: "YBR_ICT"}.get(target, photometric)


def _encode_jpeg_baseline(arr: np.ndarray[Any, Any]) -> bytes:
    """JPEG Baseline Process 1 with Pillow (libjpeg): 8-bit grey, or RGB stored as YCbCr 4:2:2."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(
        out, format="JPEG", quality=JPEG_QUALITY, subsampling=1, optimize=True)
    return out.getvalue()


def _encode_array(arr: np.ndarray[Any, Any], px: _Pixels, target: str) -> bytes:
    """One decoded frame (planar configuration 0) as a ``target`` code stream."""
    reason = _target_refusal(target, px.geometry(), px.photometric)
    if reason:
        raise NotTranscodable(reason)
    errors = []
    for plugin in _ENCODING_PLUGINS.get(target, ("",)):
        try:
            if target == JPEGBaseline8Bit:
                return _encode_jpeg_baseline(arr)
            if target == JPEGLosslessSV1:
                return jpeg_lossless.encode(arr, px.bits_stored)
            options = px.options(_encoded_photometric(target, px.photometric))
            if target == JPEG2000:
                options["j2k_cr"] = [J2K_COMPRESSION_RATIO]
            elif target == RLELossless:
                # RLE codes whole bytes (PS3.5 G.2): pydicom's encoder miscodes 16-bit samples
                # with 8 or fewer bits stored, and the code stream does not record Bits Stored.
                options["bits_stored"] = px.bits_allocated
            return get_encoder(target).encode(arr, encoding_plugin=plugin, **options)
        except Exception as exc:  # codecs raise anything (ValueError, RuntimeError, their own)
            errors.append(_first_line(exc))
    raise NotTranscodable(f"encoding as {ts_name(target)} failed: {'; '.join(errors)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # pydicom's "all plugins failed" message puts the useful part on the lines after the first.
    return " ".join(lines[:3])[:300] if lines else type(exc).__name__


# -- frames (WADO-RS frames and rendering use these) --------------------------------------------


def _pixels_of(meta: dict[str, Any], photometric: str | None = None) -> _Pixels:
    g = Geometry.from_json(meta)
    return _Pixels(g.rows, g.columns, g.samples_per_pixel, g.bits_allocated, g.bits_stored,
                   g.pixel_representation, photometric or g.photometric)


def decode_frame(data: bytes, meta: dict[str, Any], transfer_syntax: str, frame_index: int = 0) -> bytes:
    """One frame as native little-endian bytes, laid out as in Explicit VR Little Endian Pixel
    Data (PS3.5 §8.1.1), planar configuration 0.

    ``data`` is the frame's encapsulated code stream (all its fragments concatenated, PS3.5
    A.4) or, for a native ``transfer_syntax``, the frame's native bytes (returned as they are;
    from Explicit VR Big Endian, samples wider than 8 bits are byte-swapped). ``meta`` is the
    instance's DICOM JSON; ``frame_index`` only names the frame in error messages.

    The result's Photometric Interpretation is :func:`decoded_photometric` — ``RGB`` for a
    YCbCr-coded compressed frame (JPEG YBR_FULL_422, JPEG 2000 YBR_ICT/RCT, RLE YBR_FULL). 1-bit
    frames come back bit-packed (first pixel in the least significant bit). Raises
    :class:`NotTranscodable` when the frame cannot be decoded."""
    px = _pixels_of(meta)
    if is_native(transfer_syntax):
        if transfer_syntax == ExplicitVRBigEndian and px.bits_allocated > 8:
            return np.frombuffer(data, dtype=_dtype(px.bits_allocated, 0).newbyteorder(">")) \
                .astype(_dtype(px.bits_allocated, 0)).tobytes()
        return data
    reason = _decodable(transfer_syntax)
    if reason:
        raise NotTranscodable(reason)
    errors = []
    for plugin in _decoding_plugins(transfer_syntax):
        try:
            arr, _ = get_decoder(transfer_syntax).as_array(
                encapsulate([data]), index=0, as_rgb=True, decoding_plugin=plugin, **px.options())
        except Exception as exc:
            errors.append(f"{plugin}: {_first_line(exc)}")
            continue
        return _native_bytes(arr, px.bits_allocated)
    raise NotTranscodable(f"frame {frame_index + 1} could not be decoded from "
                          f"{ts_name(transfer_syntax)}: {'; '.join(errors)}")


def _frame_array(native: bytes, px: _Pixels, planar: int) -> np.ndarray[Any, Any]:
    """A native frame's bytes as an array (rows, columns[, samples]), planar configuration 0;
    YBR_FULL and YBR_FULL_422 become RGB as pydicom's decoders make them."""
    if px.bits_allocated == 1:
        raise NotTranscodable("1-bit (bit-packed) pixel data is served uncompressed only")
    dtype = _dtype(px.bits_allocated, px.pixel_representation)
    if px.photometric == "YBR_FULL_422" and len(native) < px.rows * px.columns * 3 * dtype.itemsize:
        from pydicom.pixels.utils import expand_ybr422

        native = expand_ybr422(native, px.bits_allocated)  # two values per pixel (PS3.3 C.7.6.3.1.2)
    count = px.rows * px.columns * px.samples
    if len(native) < count * dtype.itemsize:
        raise NotTranscodable(f"the frame has {len(native)} bytes, {count * dtype.itemsize} expected")
    arr = np.frombuffer(native, dtype=dtype, count=count)
    if px.samples > 1:
        arr = arr.reshape(px.samples, px.rows, px.columns).transpose(1, 2, 0) if planar else \
            arr.reshape(px.rows, px.columns, px.samples)
    else:
        arr = arr.reshape(px.rows, px.columns)
    arr = _clean_bits(arr, px)
    if px.samples == 3 and px.photometric in ("YBR_FULL", "YBR_FULL_422"):
        arr = _ybr_to_rgb(arr)
    return arr


def encode_frame(native: bytes, meta: dict[str, Any], target_ts: str, *,
                 source_ts: str | None = None) -> bytes:
    """Encode one native frame into ``target_ts`` (one frame's code stream, unencapsulated).

    ``native`` is laid out as ``meta`` (the instance's DICOM JSON) describes native Pixel Data
    (its Photometric Interpretation and Planar Configuration), or, when ``source_ts`` names the
    compressed syntax it was decoded from by :func:`decode_frame`, as that function returns it
    (:func:`decoded_photometric`, planar configuration 0). YBR_FULL(_422) pixels are converted
    to RGB first; RGB goes into JPEG as YCbCr 4:2:2 (YBR_FULL_422) and into JPEG 2000 with its
    colour transform (YBR_RCT lossless, YBR_ICT lossy). For an uncompressed ``target_ts`` the
    bytes are returned unchanged. Raises :class:`NotTranscodable` when impossible."""
    if target_ts in NATIVE_TARGETS:
        return native
    if target_ts not in TARGETS:
        raise NotTranscodable(f"transcoding to {ts_name(target_ts)} is not supported")
    decoded = source_ts is not None and not is_native(source_ts)
    if decoded:
        assert source_ts is not None
        px = _pixels_of(meta, decoded_photometric(meta, source_ts))
        planar = 0
    else:
        px = _pixels_of(meta)
        planar = Geometry.from_json(meta).planar_configuration
    arr = _frame_array(native, px, planar)
    if px.samples == 3 and px.photometric.startswith("YBR_FULL"):
        px = _Pixels(px.rows, px.columns, 3, px.bits_allocated, px.bits_stored,
                     px.pixel_representation, "RGB")
    return _encode_array(arr, px, target_ts)


# -- whole instances (WADO-RS retrieve) ---------------------------------------------------------


def _pixel_meta(ds: Dataset) -> dict[str, Any]:
    """The Image Pixel attributes of ``ds`` in DICOM JSON form, for :func:`check_conversion`."""
    out: dict[str, Any] = {}
    for tag, keyword in (("00280002", "SamplesPerPixel"), ("00280004", "PhotometricInterpretation"),
                         ("00280006", "PlanarConfiguration"), ("00280008", "NumberOfFrames"),
                         ("00280010", "Rows"), ("00280011", "Columns"), ("00280100", "BitsAllocated"),
                         ("00280101", "BitsStored"), ("00280103", "PixelRepresentation")):
        value = ds.get(keyword)
        if value is not None and value != "":
            out[tag] = {"Value": [value]}
    if "PixelData" in ds:
        out["7FE00010"] = {}
    return out


_WORD = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _swap(value: bytes, size: int) -> bytes:
    if size <= 1 or not value:
        return value
    usable = len(value) - len(value) % size
    arr = np.frombuffer(value, dtype=f">u{size}", count=usable // size)
    return arr.astype(f"<u{size}").tobytes() + value[usable:]


def _swap_big_endian(ds: Dataset) -> None:
    """Byte-swap the binary values pydicom keeps as read (OW, OF, OL, OD, OV) in a data set read
    from Explicit VR Big Endian, so it can be written little endian (PS3.5 §7.3)."""
    for elem in ds.iterall():
        if elem.tag == 0x7FE00010 or not isinstance(elem.value, bytes):
            continue
        size = _WORD.get(elem.VR)
        if size:
            elem.value = _swap(elem.value, size)
    if "PixelData" in ds:
        elem = ds["PixelData"]
        bits = int(ds.get("BitsAllocated", 8))
        # 8-bit (and bit-packed) pixels in OW are swapped in 16-bit words, wider ones per sample.
        size = bits // 8 if bits > 8 else (2 if elem.VR == "OW" else 1)
        elem.value = _swap(elem.value, size)


def _drop_group_lengths(ds: Dataset) -> None:
    """Group lengths (gggg,0000) are retired and change with the encoding (PS3.5 §7.2). Only
    sequences are parsed on the way: the other elements are written as read."""
    for tag in list(ds.keys()):
        if tag.element == 0:
            del ds[tag]
            continue
        raw = ds.get_item(tag)
        vr = getattr(raw, "VR", None) or (dictionary_VR(tag) if tag in DicomDictionary else None)
        if vr == "SQ":
            for item in ds[tag].value:
                _drop_group_lengths(item)


Frames = Iterator[tuple[np.ndarray[Any, Any], dict[str, Any]]]


class _DecodeFailed(Exception):
    """A decoder plugin failed on this pixel data (the next one is tried)."""


def _guarded(frames: Frames) -> Frames:
    try:
        yield from frames
    except Exception as exc:
        raise _DecodeFailed(_first_line(exc)) from exc


def _with_frames(ds: Dataset, source: str, consume: Callable[[Frames], T]) -> T:
    """``consume(frames)``: every frame as pydicom decodes it (YCbCr to RGB, planar
    configuration 0), one at a time; with the next decoder plugin if one fails mid-way."""
    if is_native(source):
        # Read (inflated, byte-swapped by _swap_big_endian): the values are little endian now,
        # and pydicom's decoder wants the data set's transfer syntax to be its own.
        ds.file_meta.TransferSyntaxUID = source = ExplicitVRLittleEndian
        plugins = [""]  # native data has no plugins
    else:
        plugins = _decoding_plugins(source)
    errors = []
    for plugin in plugins:
        try:
            return consume(_guarded(get_decoder(source).iter_array(ds, as_rgb=True, decoding_plugin=plugin)))
        except _DecodeFailed as exc:
            errors.append(f"{plugin}: {exc}" if plugin else str(exc))
    raise NotTranscodable(f"the pixel data could not be decoded from {ts_name(source)}: "
                          f"{'; '.join(errors) or 'no decoder'}")


def _values(ds: Dataset, keyword: str) -> list[Any]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue) else [value]


def _mark_lossy(ds: Dataset, method: str | None, ratio: float | None) -> None:
    """PS3.3 C.7.6.1.1.5: Lossy Image Compression and, for a new lossy step, its method and ratio."""
    ds.LossyImageCompression = "01"
    if method is None or ratio is None:
        return
    methods, ratios = _values(ds, "LossyImageCompressionMethod"), _values(ds, "LossyImageCompressionRatio")
    ds.LossyImageCompressionMethod = [*methods, method] if methods else method
    value = f"{ratio:.2f}"[:16]
    ds.LossyImageCompressionRatio = [*ratios, value] if ratios else value


def _set_pixels(ds: Dataset, props: dict[str, Any], frames: int) -> None:
    ds.PhotometricInterpretation = props["photometric_interpretation"]
    if int(props["samples_per_pixel"]) > 1:
        ds.PlanarConfiguration = 0
    if "NumberOfFrames" in ds or frames > 1:
        ds.NumberOfFrames = frames
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]


def _to_native(ds: Dataset, source: str) -> None:
    """Replace compressed Pixel Data with its decoded frames (PS3.5 §8.1.1)."""
    bits = int(ds.get("BitsAllocated", 8))

    def collect(frames: Frames) -> tuple[list[bytes], dict[str, Any], int]:
        parts: list[bytes] = []
        arrays: list[np.ndarray[Any, Any]] = []  # 1-bit frames are packed together, not one by one
        props: dict[str, Any] = {}
        count = 0
        for arr, frame_props in frames:
            props = frame_props  # the last frame's describe the result
            count += 1
            if bits == 1:
                arrays.append(arr.ravel())
            else:
                parts.append(_native_bytes(arr, bits))
        if arrays:
            parts = [pack_bits(np.concatenate(arrays), pad=False)]
        return parts, props, count

    parts, props, frames = _with_frames(ds, source, collect)
    if not frames:
        raise NotTranscodable("the pixel data has no frame")
    length = sum(len(p) for p in parts)
    if length > _MAX_NATIVE:
        raise NotTranscodable("the decompressed pixel data is too large for a native encoding")
    if length % 2:
        parts.append(b"\0")
    elem = ds["PixelData"]
    elem.value = b"".join(parts)
    elem.is_undefined_length = False
    elem.VR = "OB" if bits <= 8 else "OW"
    _set_pixels(ds, props, frames)


def _to_compressed(ds: Dataset, source: str, target: str) -> None:
    """Encode every frame into ``target`` and encapsulate them (PS3.5 A.4), one frame decoded at
    a time."""

    def encode_all(frames: Frames) -> tuple[list[bytes], dict[str, Any], int]:
        encoded: list[bytes] = []
        props: dict[str, Any] = {}
        raw = 0
        for arr, props in frames:
            px = _Pixels(int(props["rows"]), int(props["columns"]), int(props["samples_per_pixel"]),
                         int(props["bits_allocated"]), int(props["bits_stored"]),
                         int(props["pixel_representation"]), str(props["photometric_interpretation"]))
            encoded.append(_encode_array(arr, px, target))
            raw += arr.nbytes
        return encoded, props, raw

    encoded, props, raw = _with_frames(ds, source, encode_all)
    if not encoded:
        raise NotTranscodable("the pixel data has no frame")
    _set_pixels(ds, {**props, "photometric_interpretation":
                     _encoded_photometric(target, str(props["photometric_interpretation"]))}, len(encoded))
    if sum(len(f) + 8 for f in encoded) > 0xFFFFFFFF - 8:
        # Offsets no longer fit the Basic Offset Table (PS3.5 A.4, C.7.6.3.1.8).
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(encoded)
    else:
        ds.PixelData = encapsulate(encoded)
    elem = ds["PixelData"]
    elem.VR = "OB"
    elem.is_undefined_length = True
    if target == JPEGBaseline8Bit:
        ds.BitsStored, ds.HighBit = 8, 7  # PS3.5 Table 8.2.1-1: 8 bits stored
    if target in LOSSY_TARGETS:
        method = "ISO_10918_1" if target == JPEGBaseline8Bit else "ISO_15444_1"
        _mark_lossy(ds, method, raw / max(1, sum(len(f) for f in encoded)))


def transcode_dataset(ds: Dataset, target: str) -> Dataset:
    """Re-encode ``ds`` (read from a PS3.10 file, with its File Meta) into ``target``, in place.
    The SOP Instance UID is kept: this is the same instance in another transfer syntax."""
    source = str(ds.file_meta.TransferSyntaxUID)
    reason = check_conversion(source, target, _pixel_meta(ds))
    if reason:
        raise NotTranscodable(reason)
    _drop_group_lengths(ds)
    if source == ExplicitVRBigEndian:
        _swap_big_endian(ds)
    has_pixels = "PixelData" in ds
    if has_pixels and target in NATIVE_TARGETS and not is_native(source):
        _to_native(ds, source)
    elif has_pixels and target not in NATIVE_TARGETS:
        _to_compressed(ds, source, target)
    elif has_pixels:
        elem = ds["PixelData"]  # native to native: the bytes stay, only the VR may matter
        elem.VR = "OB" if int(ds.get("BitsAllocated", 8)) <= 8 else "OW"
    if is_lossy(source):
        _mark_lossy(ds, None, None)
    ds.file_meta.TransferSyntaxUID = target
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def transcode_file(fp: BinaryIO, target: str) -> bytes:
    """A stored PS3.10 file as a PS3.10 file in ``target`` (the whole instance in memory: callers
    transcode one instance at a time). Raises :class:`NotTranscodable`."""
    try:
        ds = dcmread(fp)
    except Exception as exc:
        raise NotTranscodable(f"the stored file cannot be read: {_first_line(exc)}") from exc
    transcode_dataset(ds, target)
    out = io.BytesIO()
    try:
        dcmwrite(out, ds, enforce_file_format=True)
    except Exception as exc:
        raise NotTranscodable(f"writing as {ts_name(target)} failed: {_first_line(exc)}") from exc
    return out.getvalue()


def transcode_first(data: bytes, targets: list[str]) -> tuple[str, bytes]:
    """A stored file's bytes in the first of ``targets`` the codecs manage, and which one it was
    (blocking: runs in a codec worker process or a thread). Raises NotTranscodable with every
    target's failure."""
    errors = []
    for ts in targets:
        try:
            return ts, transcode_file(io.BytesIO(data), ts)
        except NotTranscodable as exc:
            errors.append(str(exc))
    raise NotTranscodable("; ".join(errors))


__all__ = ["TARGETS", "Acceptable", "NotTranscodable", "candidates", "check_conversion",
           "decode_frame", "decoded_photometric", "encode_frame", "is_lossy", "stored_acceptable",
           "transcode_file", "transcode_first"]
