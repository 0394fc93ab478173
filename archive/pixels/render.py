"""Rendering frames of a stored instance to 8-bit JPEG, PNG or GIF images (PS3.18 §8.3.5).

Grayscale frames follow the Pixel Transformation Sequence of PS3.4 N.2: stored values ->
Modality LUT (rescale, or Modality LUT Sequence; per frame for enhanced multi-frame, PS3.3
C.7.6.16.2.9) -> VOI (the request's window, else the frame's or the file's Window Center/Width,
else its VOI LUT Sequence, else the frame's min/max; PS3.3 C.11.2) -> MONOCHROME1 inverted -> 8 bits.
Color frames: the decoder converts YBR_FULL / YBR_FULL_422 (and JPEG 2000's YBR_ICT / YBR_RCT)
to RGB; PALETTE COLOR goes through its lookup tables (PS3.3 C.7.6.3.1.5). Then the source region
and the viewport (PS3.18 §8.3.5.1.3), then the encoding.

Only the requested frames are decoded, one at a time, from the stored file (pydicom's
``iter_pixels`` reads one frame's bytes). Everything here blocks (file reads, decoding, numpy,
Pillow): callers run it in an executor.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, iter_pixels

log = logging.getLogger("archive.render")

JPEG = "image/jpeg"
PNG = "image/png"
GIF = "image/gif"
MEDIA_TYPES = (JPEG, PNG, GIF)

DEFLATED = "1.2.840.10008.1.2.1.99"
# VOI LUT Function defined terms (PS3.3 C.11.2.1.3).
LINEAR, LINEAR_EXACT, SIGMOID = "LINEAR", "LINEAR_EXACT", "SIGMOID"

# Read from the file beside the Image Pixel module (group 0028, which pydicom always reads):
# the enhanced multi-frame functional groups (per-frame rescale and window) and Frame Time.
_EXTRA_TAGS = [0x00181063, 0x52009229, 0x52009230]
# An animated GIF holds every frame in memory (1 byte per pixel): at most this many pixels.
GIF_MAX_PIXELS = 256 << 20
_GIF_FRAME_MS = 100  # when the instance has no Frame Time (0018,1063)


class RenderError(Exception):
    """The request cannot be rendered. ``kind``: ``"no-pixels"`` (the instance has no pixel
    data), ``"undecodable"`` (its pixel data cannot be decoded here) or ``"bad-request"`` (the
    parameters do not fit the image, e.g. a source region outside it)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message, kind)  # both in args: the error pickles back from a worker
        self.kind = kind

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Window:
    """A window (PS3.3 C.11.2.1.2): center and width in Modality LUT output units."""

    center: float
    width: float
    function: str = LINEAR


@dataclass(frozen=True)
class Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 §8.3.5.1.3): the source region (default the
    whole image; a negative sw/sh flips it) scaled to fit vw x vh, keeping its aspect ratio."""

    width: int
    height: int
    sx: float = 0.0
    sy: float = 0.0
    sw: float | None = None
    sh: float | None = None


@dataclass(frozen=True)
class RenderParams:
    media_type: str = JPEG
    quality: int = 90  # JPEG only
    window: Window | None = None
    viewport: Viewport | None = None
    fit: int | None = None  # thumbnails without viewport: longest side at most this, never enlarged


# -- decoding --------------------------------------------------------------------------------------


def _no_pixels(exc: Exception) -> bool:
    return isinstance(exc, AttributeError) and "no pixel data" in str(exc).lower()


def iter_frames(fobj: BinaryIO, transfer_syntax: str,
                indices: list[int]) -> Iterator[tuple[np.ndarray, Dataset]]:
    """Decode the frames ``indices`` (0-based) one at a time, with the data set's non-pixel
    elements needed to render them (group 0028, functional groups).

    The file is read up to its pixel data, then only each frame's bytes. A Deflated data set
    (PS3.5 A.5) cannot be read that way: it is read whole with ``dcmread`` (as is any file the
    fast path cannot parse)."""
    try:
        ds = Dataset()
        if transfer_syntax == DEFLATED:
            raise LookupError("deflated")
        frames = iter_pixels(fobj, ds_out=ds, specific_tags=_EXTRA_TAGS, indices=indices)
        first = next(frames)
    except NotImplementedError as exc:
        raise RenderError(f"cannot render: {exc}", "undecodable") from exc
    except Exception as exc:  # any parse failure: try the complete reader
        if _no_pixels(exc):
            raise RenderError("no pixel data to render", "no-pixels") from exc
        ds, frames, first = _read_whole(fobj, indices, exc)
    yield first, ds
    while True:
        try:
            arr = next(frames)
        except StopIteration:
            return
        except NotImplementedError as exc:
            raise RenderError(f"cannot render: {exc}", "undecodable") from exc
        except Exception as exc:  # a frame the decoder rejects (corrupt data)
            raise RenderError(f"cannot decode the pixel data: {exc}", "undecodable") from exc
        yield arr, ds


def _read_whole(fobj: BinaryIO, indices: list[int],
                cause: Exception) -> tuple[Dataset, Iterator[np.ndarray], np.ndarray]:
    if not isinstance(cause, LookupError):
        log.info("frame reader fell back to dcmread: %s", cause)
    try:
        fobj.seek(0)
        ds = dcmread(fobj, force=True)
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise RenderError("no pixel data to render", "no-pixels")
        frames = iter_pixels(ds, indices=indices)
        return ds, frames, next(frames)
    except RenderError:
        raise
    except NotImplementedError as exc:
        raise RenderError(f"cannot render: {exc}", "undecodable") from exc
    except Exception as exc:  # corrupt or unsupported pixel data
        raise RenderError(f"cannot decode the pixel data: {exc}", "undecodable") from exc


# -- pixel values to 8 bits ------------------------------------------------------------------------


def _photometric(ds: Dataset) -> str:
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()


def frame_item(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """The first item of functional group ``keyword`` for frame ``index``: its per-frame group,
    else the shared one (PS3.3 C.7.6.16)."""
    for groups, i in ((ds.get("PerFrameFunctionalGroupsSequence"), index),
                      (ds.get("SharedFunctionalGroupsSequence"), 0)):
        if groups and len(groups) > i:
            seq = groups[i].get(keyword)
            if seq:
                return seq[0]
    return None


def _first_float(value: Any) -> float | None:
    """First value of a DS element that may hold several (Window Center/Width are 1-n)."""
    if value is None or value == "":
        return None
    if not isinstance(value, (int, float, str)):
        try:
            value = value[0]
        except (TypeError, IndexError):
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def modality_lut(arr: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    """Modality LUT (PS3.3 C.11.1): the frame's Pixel Value Transformation (enhanced
    multi-frame), else the Modality LUT Sequence or Rescale Slope/Intercept of the data set."""
    item = frame_item(ds, index, "PixelValueTransformationSequence")
    if item is not None:
        slope = _first_float(item.get("RescaleSlope"))
        intercept = _first_float(item.get("RescaleIntercept"))
        if slope is not None and intercept is not None:
            return arr.astype(np.float64) * slope + intercept
    try:
        if ds.get("ModalityLUTSequence"):
            return apply_modality_lut(arr, ds)
        slope = _first_float(ds.get("RescaleSlope"))
        intercept = _first_float(ds.get("RescaleIntercept"))
        if slope is not None and intercept is not None:
            return arr.astype(np.float64) * slope + intercept
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        # A malformed Modality LUT: render the stored values rather than nothing.
        log.info("modality LUT ignored: %s", exc)
    return arr


def file_window(ds: Dataset, index: int) -> Window | None:
    """The window the instance proposes for frame ``index``: its Frame VOI LUT functional group,
    else the first Window Center/Width of the data set (PS3.3 C.11.2.1.2); None if invalid."""
    item = frame_item(ds, index, "FrameVOILUTSequence")
    for source in (item, ds):
        if source is None:
            continue
        center = _first_float(source.get("WindowCenter"))
        width = _first_float(source.get("WindowWidth"))
        if center is None or width is None:
            continue
        function = str(source.get("VOILUTFunction") or ds.get("VOILUTFunction") or LINEAR)
        function = function.strip().upper()
        if function not in (LINEAR, LINEAR_EXACT, SIGMOID):
            function = LINEAR
        if width >= 1 or (function != LINEAR and width > 0):
            return Window(center, width, function)
    return None


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Window to [0, 255] (float): PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT),
    C.11.2.1.3.1 (SIGMOID), with y_min = 0 and y_max = 255."""
    x = values.astype(np.float64, copy=False)
    c, w = window.center, window.width
    if window.function == SIGMOID:
        with np.errstate(over="ignore"):
            return 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if window.function == LINEAR_EXACT:
        low, high = c - w / 2, c + w / 2
        y = ((x - c) / w + 0.5) * 255.0
    else:
        low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
        # w == 1: nothing lies between low and high, every value is y_min or y_max.
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0 if w > 1 else np.zeros_like(x)
    return np.where(x <= low, 0.0, np.where(x > high, 255.0, y))


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The data set's first VOI LUT (PS3.3 C.11.2.1.1) scaled to [0, 255], or None."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    try:
        depth = int(seq[0].LUTDescriptor[2])
        if np.issubdtype(values.dtype, np.floating):
            values = np.rint(values).astype(np.int64)  # LUT entries are indexed by integers
        out = apply_voi(values, ds)
        return out.astype(np.float64) * (255.0 / (2 ** depth - 1))
    except (ValueError, TypeError, IndexError, KeyError, AttributeError,
            NotImplementedError) as exc:
        log.info("VOI LUT Sequence ignored: %s", exc)
        return None


def _min_max(values: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """``values`` mapped to [0, 255] by the range of ``sample`` (the frame's own values): what is
    shown when nothing better is known."""
    x = values.astype(np.float64, copy=False)
    finite = sample[np.isfinite(sample)] if np.issubdtype(sample.dtype, np.floating) else sample
    if finite.size == 0:
        return np.zeros_like(x)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros_like(x)
    return (x - low) * (255.0 / (high - low))


def _color_to_8bit(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8 and bits <= 8:
        return arr
    scaled = arr.astype(np.float64) * (255.0 / (2 ** bits - 1))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_8bit(arr: np.ndarray, ds: Dataset, index: int, window: Window | None) -> np.ndarray:
    """A decoded frame as 8-bit grayscale (rows, columns) or RGB (rows, columns, 3)."""
    photometric = _photometric(ds)
    if photometric == "PALETTE COLOR" and arr.ndim == 2:
        try:
            rgb = apply_color_lut(arr, ds)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            raise RenderError(f"cannot apply the palette color lookup tables: {exc}",
                              "undecodable") from exc
        return _color_to_8bit(rgb, 8 if rgb.dtype == np.uint8 else 16)
    if arr.ndim == 3:
        # RGB: pydicom has converted YBR_FULL and YBR_FULL_422 (raw=False), and JPEG 2000's
        # YBR_ICT / YBR_RCT come out of the decoder as RGB.
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
        return _color_to_8bit(arr[..., :3], bits)
    return _grayscale(arr, ds, index, window)


# Integer frames spanning at most this many values go through a lookup table: the grayscale
# pipeline is computed once per value instead of once per pixel (a 512x512 CT: 4 ms -> 1 ms).
_LUT_LEVELS = 1 << 17


def _grayscale(arr: np.ndarray, ds: Dataset, index: int, window: Window | None) -> np.ndarray:
    if arr.dtype.kind in "iu" and arr.size >= 4096:
        low, high = int(arr.min()), int(arr.max())
        if high - low < _LUT_LEVELS:
            offsets = arr.astype(np.int32) - np.int32(low)

            def present() -> np.ndarray:  # which table entries occur in the frame (for min/max)
                return np.bincount(offsets.ravel(), minlength=high - low + 1) > 0

            levels = np.arange(low, high + 1, dtype=np.int64)
            return _gray_levels(levels, ds, index, window, present).take(offsets)
    return _gray_levels(arr, ds, index, window, None)


def _gray_levels(x: np.ndarray, ds: Dataset, index: int, window: Window | None,
                 present: Callable[[], np.ndarray] | None) -> np.ndarray:
    """Stored values ``x`` through Modality LUT, VOI and MONOCHROME1 inversion to 8 bits.
    ``present``: when ``x`` is a table of levels, which of them the frame holds."""
    photometric = _photometric(ds)
    values = modality_lut(x, ds, index)
    win = window or file_window(ds, index)
    if win is not None:
        out = apply_window(values, win)
    else:
        lut = _voi_lut(values, ds)
        if lut is None:
            lut = _min_max(values, values[present()] if present is not None else values)
        out = lut
    if photometric == "MONOCHROME1":
        out = 255.0 - out  # minimum value is white (PS3.3 C.7.6.3.1.2)
    return np.clip(np.rint(np.nan_to_num(out, nan=0.0)), 0, 255).astype(np.uint8)


# -- geometry and encoding -------------------------------------------------------------------------


def _region(img: Image.Image, vp: Viewport) -> Image.Image:
    """The source region of PS3.18 §8.3.5.1.3, clipped to the image; flipped where sw/sh < 0."""
    width, height = img.size
    sw = vp.sw if vp.sw is not None else width - vp.sx
    sh = vp.sh if vp.sh is not None else height - vp.sy
    x0, y0 = round(vp.sx), round(vp.sy)
    x1 = min(width, x0 + round(abs(sw)))
    y1 = min(height, y0 + round(abs(sh)))
    if x0 >= width or y0 >= height or x1 <= x0 or y1 <= y0:
        raise RenderError(f"viewport: the source region lies outside the {width}x{height} image",
                          "bad-request")
    if (x0, y0, x1, y1) != (0, 0, width, height):
        img = img.crop((x0, y0, x1, y1))
    if sw < 0:
        img = ImageOps.mirror(img)
    if sh < 0:
        img = ImageOps.flip(img)
    return img


def _resize(img: Image.Image, width: int, height: int) -> Image.Image:
    if (width, height) == img.size:
        return img
    if width < img.size[0]:
        # reducing_gap: a fast box reduction first, then Lanczos (Pillow's thumbnail recipe).
        return img.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img.resize((width, height), Image.Resampling.BICUBIC)


def _fit(size: tuple[int, int], box_w: int, box_h: int) -> tuple[int, int]:
    scale = min(box_w / size[0], box_h / size[1])
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def to_image(arr: np.ndarray, ds: Dataset, index: int, params: RenderParams) -> Image.Image:
    """One decoded frame through VOI, region and viewport to a Pillow image (L or RGB)."""
    img = Image.fromarray(to_8bit(arr, ds, index, params.window))
    if params.viewport is not None:
        img = _region(img, params.viewport)
        img = _resize(img, *_fit(img.size, params.viewport.width, params.viewport.height))
    elif params.fit is not None and max(img.size) > params.fit:
        img = _resize(img, *_fit(img.size, params.fit, params.fit))
    return img


def _gif_frame(img: Image.Image) -> Image.Image:
    # Pillow would map RGB to its fixed web palette: an adaptive one keeps the colors.
    return img.quantize(256) if img.mode == "RGB" else img


def encode(img: Image.Image, params: RenderParams) -> bytes:
    buf = io.BytesIO()
    if params.media_type == JPEG:
        img.save(buf, "JPEG", quality=params.quality)
    elif params.media_type == PNG:
        img.save(buf, "PNG", compress_level=3)  # level 3: most of the size gain, a third of the time
    else:
        _gif_frame(img).save(buf, "GIF")
    return buf.getvalue()


def render_frames(fobj: BinaryIO, transfer_syntax: str, indices: list[int],
                  params: RenderParams) -> Iterator[bytes]:
    """The encoded image of each frame of ``indices``, decoded and rendered one at a time."""
    for index, (arr, ds) in zip(indices, iter_frames(fobj, transfer_syntax, indices), strict=False):
        yield encode(to_image(arr, ds, index, params), params)


def _render_first(fobj: BinaryIO, transfer_syntax: str, index: int, params: RenderParams) -> bytes | None:
    frames = render_frames(fobj, transfer_syntax, [index], params)
    try:
        return next(frames, None)
    finally:
        frames.close()


def render_file_frame(path: str, transfer_syntax: str, index: int, params: RenderParams) -> bytes | None:
    """One frame of the file at ``path``, rendered and encoded (None if the file has no such
    frame): the whole of one rendered request, as one call for a codec worker process."""
    with open(path, "rb") as fobj:
        return _render_first(fobj, transfer_syntax, index, params)


def render_bytes_frame(data: bytes, transfer_syntax: str, index: int, params: RenderParams) -> bytes | None:
    """:func:`render_file_frame` for a blob without a local file (a remote store): the server
    process read its bytes and hands them to the codec worker process."""
    return _render_first(io.BytesIO(data), transfer_syntax, index, params)


def render_animation(fobj: BinaryIO, transfer_syntax: str, indices: list[int],
                     params: RenderParams) -> bytes:
    """The frames ``indices`` as one animated GIF (Frame Time, else 100 ms, per frame)."""
    frames: list[Image.Image] = []
    pixels = 0
    frame_ms = _GIF_FRAME_MS
    for index, (arr, ds) in zip(indices, iter_frames(fobj, transfer_syntax, indices), strict=False):
        frame = _gif_frame(to_image(arr, ds, index, params))
        pixels += frame.size[0] * frame.size[1]
        if pixels > GIF_MAX_PIXELS:
            raise RenderError("too many frames for one image/gif; ask for "
                              'multipart/related; type="image/jpeg" or a smaller viewport',
                              "bad-request")
        frames.append(frame)
        frame_ms = int(_first_float(ds.get("FrameTime")) or _GIF_FRAME_MS)
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=len(frames) > 1, append_images=frames[1:],
                   duration=min(max(frame_ms, 20), 10_000), loop=0)
    return buf.getvalue()
