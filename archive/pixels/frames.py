"""Where each frame of a stored instance's pixel data lies, worked out from what ingest indexed
(pixel data offset, fragment offsets, offset tables) so that a frame is served by reading only
its own bytes (PS3.18 §10.4.1.1.3 Retrieve Frames; PS3.5 §8.1.1 native, §8.2 and A.4 encapsulated).

Nothing here does I/O on the event loop: the pure functions compute byte ranges; the few that
read or transform bytes (:func:`native_frame`, :func:`read_fragment_marks`,
:func:`deflated_frames`) are meant for an executor thread.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, BinaryIO

import numpy as np

from archive.pixels.geometry import Geometry

EXPLICIT_LE = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
# PS3.5 A.4.11: encapsulated, but each fragment holds one native (uncompressed) frame.
ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98"
OCTET_STREAM = "application/octet-stream"

_JPEG = [f"1.2.840.10008.1.2.4.{n}" for n in (*range(50, 67), 70)]
# PS3.18 Table 8.7.3-5 (compressed bulk data media types), plus image/jphc (HTJ2K,
# Supplement 235) and image/jxl; the retired JPEG processes share image/jpeg.
MEDIA_TYPES: dict[str, str] = {
    **{ts: "image/jpeg" for ts in _JPEG},
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.110": "image/jxl",
    "1.2.840.10008.1.2.4.111": "image/jxl",
    "1.2.840.10008.1.2.4.112": "image/jxl",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
# Media types of earlier drafts that clients still send.
MEDIA_ALIASES = {"image/x-jls": "image/jls", "image/x-dicom-rle": "image/dicom-rle"}

_J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
        "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203"}
_RLE = "1.2.840.10008.1.2.5"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JPEG_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"  # JPEG EOI, and JPEG 2000 EOC has the same code

# How many bytes of each fragment's start and end :func:`read_fragment_marks` reads.
MARK_BYTES = 16
PIXEL_TAGS = ("7FE00010", "7FE00008", "7FE00009")  # Pixel Data, Float and Double Float Pixel Data


class FrameListError(ValueError):
    """A frame list the client sent is not valid; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_frame_list(text: str, number_of_frames: int) -> list[int]:
    """Frame numbers (1-based, in the order given, duplicates kept) of a ``{frames}`` path
    segment: a comma-separated list of positive integers (PS3.18 §10.4.1.1.3, §8.3.1.1).
    Malformed lists are 400; frame numbers beyond Number of Frames are 404 (the syntax is
    right but the resource does not exist)."""
    text = text.replace("%2C", ",").replace("%2c", ",")
    if not text.strip():
        raise FrameListError("empty frame list: use e.g. frames/1 or frames/1,3,5")
    if len(text) > 65536:
        raise FrameListError("frame list too long")
    numbers: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or not item.isascii():
            shown = item if len(item) <= 20 else item[:17] + "..."
            raise FrameListError(f"frame list: {shown!r} is not a frame number (1, 2, ...)")
        n = int(item)
        if n < 1:
            raise FrameListError("frame list: frame numbers start at 1")
        numbers.append(n)
    beyond = [n for n in numbers if n > number_of_frames]
    if beyond:
        raise FrameListError(f"frame {beyond[0]} does not exist: the instance has "
                             f"{number_of_frames} frame(s)", status=404)
    return numbers


# -- native pixel data -----------------------------------------------------------------------


@dataclass(frozen=True)
class NativeSlice:
    """The bytes to read for one native frame, and how to turn them into the frame.

    ``start``/``end`` are offsets relative to the pixel data value. Frames of 1-bit data may
    start mid-byte (PS3.5 §8.1.1: bits are packed across frame boundaries), and big-endian
    files need whole words to swap, so the range read can be wider than the frame."""

    start: int
    end: int
    bit_offset: int  # first bit of the frame, counted from ``start`` (least significant first)
    bits: int  # length of the frame in bits
    swap: int  # word size to byte-swap (big endian files), 1 for none

    @property
    def plain(self) -> bool:
        """True when the bytes read are the frame as they are (no CPU work to do)."""
        return (self.swap == 1 and self.bit_offset == 0 and self.bits % 8 == 0
                and (self.end - self.start) * 8 == self.bits)

    @property
    def out_length(self) -> int:
        return (self.bits + 7) // 8


def _swap_word(geometry: Geometry, vr: str, big_endian: bool) -> int:
    """Byte-swap unit turning a big-endian value into little endian: one pixel for > 8 bits;
    an OW word for 8- and 1-bit data (they are packed into 16-bit words, PS3.5 §8.1.1)."""
    if not big_endian:
        return 1
    if geometry.bits_allocated > 8:
        return geometry.bits_allocated // 8
    return 2 if vr == "OW" else 1


def frame_bits(geometry: Geometry) -> int:
    """Bits of one native frame (YBR_FULL_422 keeps two values per pixel, PS3.3 C.7.6.3.1.2)."""
    samples = 2 if geometry.photometric == "YBR_FULL_422" else geometry.samples_per_pixel
    return geometry.rows * geometry.columns * samples * geometry.bits_allocated


def native_slice(geometry: Geometry, value_length: int, vr: str, index: int,
                 big_endian: bool) -> NativeSlice:
    """Where frame ``index`` (0-based) lies in a native pixel data value of ``value_length``."""
    bits = frame_bits(geometry)
    first_bit = index * bits
    word = _swap_word(geometry, vr, big_endian)
    start = first_bit // 8
    end = -(-(first_bit + bits) // 8)
    start -= start % word
    end = min(-(-end // word) * word, max(value_length, start))
    return NativeSlice(start, end, first_bit - start * 8, bits, word)


def native_frame(data: bytes, s: NativeSlice) -> bytes:
    """The frame (little endian, starting at bit 0) from the bytes read for ``s`` (CPU work:
    run in an executor for anything but small frames)."""
    if s.plain:
        return data
    buf = np.frombuffer(data, dtype=np.uint8)
    if s.swap > 1:
        whole = len(buf) - len(buf) % s.swap
        buf = buf[:whole].reshape(-1, s.swap)[:, ::-1].reshape(-1)
    if s.bit_offset % 8 == 0 and s.bits % 8 == 0:
        first = s.bit_offset // 8
        out = buf[first:first + s.bits // 8].tobytes()
    else:
        bits = np.unpackbits(buf, bitorder="little")[s.bit_offset:s.bit_offset + s.bits]
        out = np.packbits(bits, bitorder="little").tobytes()
    # A short value (already refused at ingest, but be safe) is padded, never served short.
    return out.ljust(s.out_length, b"\0")


def deflated_frames(fobj: BinaryIO, geometry: Geometry, indexes: list[int]) -> list[bytes]:
    """Frames of a Deflated Explicit VR Little Endian file, whose offsets mean nothing: inflate
    and parse it whole with pydicom (blocking, memory of one data set: run in an executor;
    such files are rare). The pixel data inside is native little endian."""
    from pydicom import dcmread

    ds = dcmread(fobj)
    elem = next((ds[int(t, 16)] for t in PIXEL_TAGS if int(t, 16) in ds), None)
    if elem is None or not isinstance(elem.value, bytes | bytearray):
        raise ValueError("the deflated data set has no pixel data")
    data = bytes(elem.value)
    out = []
    for index in indexes:
        s = native_slice(geometry, len(data), elem.VR, index, big_endian=False)
        out.append(native_frame(data[s.start:s.end], s))
    return out


# -- encapsulated pixel data -----------------------------------------------------------------


FrameSpans = list[tuple[int, int]]  # per frame: [first fragment index, end index)


def _spans_from_offsets(fragments: list[list[int]], offsets: list[int]) -> FrameSpans | None:
    """Frames from item offsets measured from the first fragment's item tag (PS3.5 A.4: Basic
    Offset Table; PS3.3 C.7.6.3.1.8: Extended Offset Table). Our fragment list has value
    offsets: each item tag is 8 bytes before. None if an offset hits no fragment start."""
    base = fragments[0][0] - 8
    index_of = {value_offset - 8 - base: i for i, (value_offset, _) in enumerate(fragments)}
    found = [index_of.get(int(o)) for o in offsets]
    starts = [s for s in found if s is not None]
    if not starts or len(starts) != len(found) or starts[0] != 0:
        return None
    if any(b <= a for a, b in pairwise(starts)):
        return None
    return list(pairwise(starts + [len(fragments)]))


def frame_spans(fragments: list[list[int]], basic_offsets: list[int], number_of_frames: int,
                extended_offsets: list[int] | None = None) -> FrameSpans | None:
    """Fragments of each frame, by the rules of PS3.5 A.4 (as pydicom.encaps applies them):
    Extended Offset Table, else Basic Offset Table, else one fragment per frame when the
    counts match, else all fragments for a single frame. None when only the fragments'
    contents can tell (see :func:`spans_from_marks`)."""
    if not fragments:
        return None
    for offsets in (extended_offsets, basic_offsets):
        if offsets:
            spans = _spans_from_offsets(fragments, offsets)
            if spans is not None:
                return spans
    if len(fragments) == number_of_frames:
        return [(i, i + 1) for i in range(len(fragments))]
    if number_of_frames == 1:
        return [(0, len(fragments))]
    return None


def _is_frame_start(head: bytes, ts: str) -> bool:
    """Whether a fragment begins a codestream of ``ts`` (JPEG/JPEG-LS SOI; JPEG 2000 SOC+SIZ
    or a jp2 signature box; an RLE header: 1-15 segments, the first at offset 64)."""
    if ts in _J2K:
        return head.startswith(_J2K_SOC_SIZ) or head.startswith(_JP2_SIGNATURE)
    if ts == _RLE:
        if len(head) < 8:
            return False
        segments, first = struct.unpack("<LL", head[:8])
        return 1 <= segments <= 15 and first == 64
    if MEDIA_TYPES.get(ts) in ("image/jpeg", "image/jls"):
        return head.startswith(_JPEG_SOI)
    return False


def spans_from_marks(heads: list[bytes], tails: list[bytes], ts: str,
                     number_of_frames: int) -> FrameSpans | None:
    """Frames of fragments with no offset table: a frame starts at each fragment that begins
    with the codec's start marker; failing that (count mismatch), a frame ends at each fragment
    whose last bytes hold an EOI/EOC marker (pydicom's rule in generate_fragmented_frames)."""
    n = len(heads)
    starts = [i for i, h in enumerate(heads) if _is_frame_start(h, ts)]
    if starts and starts[0] == 0 and len(starts) == number_of_frames:
        return list(pairwise(starts + [n]))
    ends = [i + 1 for i, t in enumerate(tails) if _EOI in t[-10:]]
    if ends and ends[-1] == n and len(ends) == number_of_frames:
        return list(pairwise([0] + ends))
    return None


def read_fragment_marks(fobj: BinaryIO, fragments: list[list[int]]) -> tuple[list[bytes], list[bytes]]:
    """The first and last :data:`MARK_BYTES` of each fragment (blocking: executor only)."""
    heads, tails = [], []
    with fobj:
        for offset, length in fragments:
            fobj.seek(offset)
            heads.append(fobj.read(min(length, MARK_BYTES)))
            tail = min(length, MARK_BYTES)
            fobj.seek(offset + length - tail)
            tails.append(fobj.read(tail))
    return heads, tails


def unpack_offsets(data: bytes) -> list[int]:
    """Values of an OV element (Extended Offset Table), little endian (PS3.5 §6.2)."""
    return list(struct.unpack(f"<{len(data) // 8}Q", data[:len(data) // 8 * 8]))


def pixel_tag_in(meta: dict[str, Any]) -> str | None:
    """The pixel data attribute the instance has, if any (Pixel Data, Float or Double Float)."""
    return next((t for t in PIXEL_TAGS if t in meta), None)
