"""A generated corpus of bad PS3.10 files (issue 5): every entry is built from a valid synthetic
instance (tests/synth.py) and must be refused by ingest with a failure reason, never crash it.

:func:`corpus` returns them all by name. Each :class:`BadFile` says in which region it breaks the
file; those whose File Meta is intact (``dimse``) can also be sent over DIMSE, where only the data
set travels. Nothing is stored on disk: the corpus is regenerated (deterministically apart from
fresh UIDs) by each test that uses it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from tests import synth

PREAMBLE = 128
META_START = 132  # after the preamble and "DICM"
PIXEL_TAG = b"\xe0\x7f\x10\x00"
UNDEFINED = 0xFFFFFFFF
# How far the deflate bomb inflates; the parser must give up long before (part10.DEFLATED_MAX).
BOMB_SIZE = 4 * 1024 ** 3 - 1024 ** 2


@dataclass(frozen=True)
class BadFile:
    name: str
    region: str  # preamble, meta, dataset, pixel, uid, transfer-syntax, deflate
    data: bytes
    dimse: bool  # File Meta intact: the data set can be sent as a C-STORE


@dataclass(frozen=True)
class Layout:
    """Region boundaries of a valid synthetic file."""

    dataset_start: int
    pixel_header: int
    pixel_value: int
    end: int


def layout(data: bytes) -> Layout:
    group_length = struct.unpack("<L", data[META_START + 8:META_START + 12])[0]
    dataset_start = META_START + 12 + group_length
    pixel = data.index(PIXEL_TAG, dataset_start)
    return Layout(dataset_start, pixel, pixel + 12, len(data))


def _element(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    """An explicit VR little endian element; ``length`` overrides the encoded length."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    n = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV"):
        return head + b"\0\0" + struct.pack("<L", n) + value
    return head + struct.pack("<H", n) + value


def _item(body: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(body) if length is None else length) + body


ITEM_DELIM = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
SEQ_DELIM = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
CONTENT_SEQUENCE = 0x0040A730  # sorts between (0028,xxxx) and the pixel data


def _insert_before_pixels(data: bytes, extra: bytes) -> bytes:
    at = layout(data).pixel_header
    return data[:at] + extra + data[at:]


def nested_sequences(depth: int, defined_lengths: bool = False) -> bytes:
    """``depth`` sequences each in the only item of the one above (undefined lengths unless
    ``defined_lengths``)."""
    if defined_lengths:
        body = _element(0x00100010, b"PN", b"DEEP")
        for _ in range(depth):
            body = _element(CONTENT_SEQUENCE, b"SQ", _item(body))
        return body
    opening = _element(CONTENT_SEQUENCE, b"SQ", b"", UNDEFINED) + _item(b"", UNDEFINED)
    closing = ITEM_DELIM + SEQ_DELIM
    return opening * depth + _element(0x00100010, b"PN", b"DEEP") + closing * depth


@contextmanager
def _no_validation() -> Iterator[None]:
    """pydicom neither warns about nor refuses invalid values (they are the point here)."""
    settings = pydicom_config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def _with_dataset(**changes: object) -> bytes:
    """A valid instance whose data set attributes are set (or deleted: None) as given, written
    without validation (the values are meant to be invalid)."""
    ds = synth.dataset()
    with _no_validation():
        for keyword, value in changes.items():
            delattr(ds, keyword)  # a new element validates (not) with the current setting
            if value is not None:
                setattr(ds, keyword, value)
        # dcmwrite copies SOP Class/Instance UID into the File Meta: new elements there too.
        for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
            value = ds.file_meta.get(keyword)
            delattr(ds.file_meta, keyword)
            setattr(ds.file_meta, keyword, value)
        return synth.encode(ds)


def with_meta(meta: Dataset, dataset: bytes) -> bytes:
    """A Part 10 file of ``meta`` (written as given) and the raw data set bytes."""
    buf = BytesIO()
    buf.write(b"\0" * PREAMBLE + b"DICM")
    with _no_validation():
        write_file_meta_info(buf, meta, enforce_standard=False)
    return buf.getvalue() + dataset


def _meta(ts: str | None) -> tuple[Dataset, bytes]:
    """File Meta of a fresh valid instance with transfer syntax ``ts`` (None: none), and its
    explicit VR little endian data set bytes."""
    ds = synth.dataset()
    data = synth.encode(ds)
    meta = Dataset()
    meta.FileMetaInformationGroupLength = 0  # write_file_meta_info sets the right value
    meta.FileMetaInformationVersion = b"\0\1"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if ts is not None:
        with _no_validation():
            meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    return meta, data[layout(data).dataset_start:]


def deflated(dataset: bytes) -> bytes:
    """Raw deflate (PS3.5 A.5) of ``dataset``."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(dataset) + c.flush()


@lru_cache(maxsize=1)
def _zero_block() -> bytes:
    """1 MiB of zeros, deflated and fully flushed: a full flush resets the compressor, so every
    such block compresses to the same bytes and a stream of gigabytes is this block repeated
    (a few MB, made in milliseconds)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = c.compress(b"\0" * (1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(b"\0" * (1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    assert again == block, "zlib does not repeat a fully flushed block"
    return block


def deflate_bomb(size: int = BOMB_SIZE) -> bytes:
    """A valid deflated instance whose data set ends with a trailing padding element of ``size``
    zero bytes: a few MB on the wire that inflate to gigabytes."""
    meta, dataset = _meta(DeflatedExplicitVRLittleEndian)
    blocks = size // (1 << 20)
    padding = _element(0xFFFCFFFC, b"OB", b"", blocks << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = c.compress(dataset + padding) + c.flush(zlib.Z_FULL_FLUSH)
    block = _zero_block()
    tail = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()  # an empty final block
    return with_meta(meta, head + block * blocks + tail)


def _truncations(data: bytes) -> dict[str, tuple[str, bytes]]:
    lay = layout(data)
    cuts = {
        "empty file": ("preamble", 0),
        "cut in the preamble": ("preamble", 64),
        "cut in DICM": ("preamble", 130),
        "cut after DICM": ("meta", META_START),
        "cut in the meta group length": ("meta", META_START + 6),
        "cut in the File Meta": ("meta", (META_START + lay.dataset_start) // 2),
        "cut at the end of the File Meta": ("meta", lay.dataset_start),
        "cut in the first data set element header": ("dataset", lay.dataset_start + 5),
        "cut in the data set": ("dataset", (lay.dataset_start + lay.pixel_header) // 2),
        "cut in the pixel data header": ("pixel", lay.pixel_header + 6),
        "cut after the pixel data header": ("pixel", lay.pixel_value),
        "cut in the pixel data": ("pixel", (lay.pixel_value + lay.end) // 2),
        "one byte short": ("pixel", lay.end - 1),
    }
    return {name: (region, data[:at]) for name, (region, at) in cuts.items()}


def corpus(include_bomb: bool = True) -> list[BadFile]:
    """Every bad file, each built from a fresh valid instance."""
    out: list[BadFile] = []

    def add(name: str, region: str, data: bytes, dimse: bool = True) -> None:
        out.append(BadFile(name, region, data, dimse))

    valid = synth.instance()
    lay = layout(valid)
    for name, (region, data) in _truncations(valid).items():
        # Over DIMSE only the data set travels: cuts before it are STOW-RS only.
        add(name, region, data, dimse=region in ("dataset", "pixel"))

    # -- preamble and prefix
    add("DICN instead of DICM", "preamble", valid[:128] + b"DICN" + valid[132:], dimse=False)
    add("no preamble (data set only)", "preamble", valid[lay.dataset_start:], dimse=False)
    add("no preamble (DICM first)", "preamble", valid[128:], dimse=False)
    add("text file", "preamble", b"hello, this is not DICOM\n" * 20, dimse=False)

    # -- File Meta
    garbage_meta = valid[:META_START] + bytes(range(256)) + valid[lay.dataset_start:]
    add("garbage File Meta", "meta", garbage_meta, dimse=False)

    # -- undefined and huge lengths in the data set
    add("UT of undefined length", "dataset",
        _insert_before_pixels(synth.instance(), _element(0x0040A160, b"UT", b"TEXT", UNDEFINED)))
    add("UT of length 0xFFFFFFF0", "dataset",
        _insert_before_pixels(synth.instance(), _element(0x0040A160, b"UT", b"TEXT", 0xFFFFFFF0)))
    add("OB of length 0x7FFFFFFE before the pixel data", "dataset",
        _insert_before_pixels(synth.instance(), _element(0x00420011, b"OB", b"\0\0", 0x7FFFFFFE)))
    add("LO of length 0xFFFF", "dataset",
        _insert_before_pixels(synth.instance(), _element(0x00400254, b"LO", b"X", 0xFFFF)))
    add("sequence never closed", "dataset",
        _insert_before_pixels(synth.instance(), _element(CONTENT_SEQUENCE, b"SQ", b"", UNDEFINED)
                              + _item(_element(0x00100010, b"PN", b"X"), UNDEFINED)))
    add("item of length 0xFFFFFFF0", "dataset",
        _insert_before_pixels(synth.instance(), _element(CONTENT_SEQUENCE, b"SQ", b"", UNDEFINED)
                              + _item(b"", 0xFFFFFFF0)))
    add("sequence of length 0xFFFFFFF0", "dataset",
        _insert_before_pixels(synth.instance(), _element(CONTENT_SEQUENCE, b"SQ", _item(b""), 0xFFFFFFF0)))
    fresh = synth.instance()
    px = layout(fresh).pixel_header
    add("pixel data of length 0xFFFFFFF0", "pixel",
        fresh[:px + 8] + struct.pack("<L", 0xFFFFFFF0) + fresh[px + 12:])
    fresh = synth.instance()
    px = layout(fresh).pixel_header
    add("native pixel data of undefined length", "pixel",
        fresh[:px + 8] + struct.pack("<L", UNDEFINED) + fresh[px + 12:])
    fresh = synth.instance()
    add("garbage after the pixel data", "pixel", fresh + bytes(range(256)) * 4)
    add("stray item after the pixel data", "pixel", synth.instance() + _item(b"1234"))

    # -- 1,000-deep nested sequences
    add("sequences 1000 deep (undefined lengths)", "dataset",
        _insert_before_pixels(synth.instance(), nested_sequences(1000)))
    add("sequences 1000 deep (defined lengths)", "dataset",
        _insert_before_pixels(synth.instance(), nested_sequences(1000, defined_lengths=True)))

    # -- UIDs
    add("no SOP Instance UID", "uid", _with_dataset(SOPInstanceUID=None))
    add("no Study Instance UID", "uid", _with_dataset(StudyInstanceUID=None))
    add("no SOP Class UID", "uid", _with_dataset(SOPClassUID=None))
    bad_uids: dict[str, Callable[[], str]] = {
        "../..": lambda: "../..",
        "'..' components": lambda: "1.2.840.10008..1",
        "a path": lambda: "1.2.3/../../4.5",
        "a slash": lambda: "1.2.840/1",
        "a backslash": lambda: "1.2.840\\..\\1",
        "65 characters": lambda: "1.2." + "1" * 61,
        "letters": lambda: "1.2.840.abc",
        "a leading zero component": lambda: "1.2.0840.1",
        "spaces": lambda: "1.2. 840.1",
        "a NUL inside": lambda: "1.2\x00.3",
    }
    for label, make in bad_uids.items():
        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            add(f"{keyword} with {label}", "uid", _with_dataset(**{keyword: make()}))

    # -- transfer syntax
    meta, dataset = _meta(None)
    add("no transfer syntax", "transfer-syntax", with_meta(meta, dataset), dimse=False)
    meta, dataset = _meta("1.2.840.10008.1.2.x")
    add("transfer syntax with letters", "transfer-syntax", with_meta(meta, dataset), dimse=False)
    meta, dataset = _meta("1.2.840.10008.1.2.4.50")  # JPEG baseline, but native pixel data
    add("JPEG transfer syntax on native pixel data", "transfer-syntax", with_meta(meta, dataset))
    meta, dataset = _meta("1.2.840.10008.1.2.2")  # big endian, but the bytes are little endian
    add("explicit VR big endian declared on little endian bytes", "transfer-syntax",
        with_meta(meta, dataset))
    meta, dataset = _meta(DeflatedExplicitVRLittleEndian)
    add("deflated transfer syntax, data set not deflated", "deflate", with_meta(meta, dataset))
    meta, dataset = _meta(ExplicitVRLittleEndian)
    add("explicit transfer syntax, data set deflated", "transfer-syntax",
        with_meta(meta, deflated(dataset)))
    meta, dataset = _meta(DeflatedExplicitVRLittleEndian)
    add("deflated data set cut short", "deflate", with_meta(meta, deflated(dataset)[:-40]))
    if include_bomb:
        add("deflate bomb (4 GB inflated)", "deflate", deflate_bomb())
    return out


def tolerated(valid: bytes) -> dict[str, bytes]:
    """Flawed variants of the valid file ``valid`` that are stored all the same (as by pydicom
    and DCMTK): the data set is intact, so they are the same instance as ``valid``. (A file cut
    exactly before its pixel data is a well-formed file without pixel data: not detectable.)"""
    return {
        "meta group length 0xFFFFFFF0":
            valid[:META_START + 8] + struct.pack("<L", 0xFFFFFFF0) + valid[META_START + 12:],
        "meta group length 2 too short":
            valid[:META_START + 8] + struct.pack("<L", layout(valid).dataset_start - META_START - 14)
            + valid[META_START + 12:],
        "meta without group length": valid[:META_START] + valid[META_START + 12:],
    }


def good_deflated() -> bytes:
    """A valid deflated instance (the bomb's control: deflate itself is accepted)."""
    meta, dataset = _meta(DeflatedExplicitVRLittleEndian)
    return with_meta(meta, deflated(dataset))
