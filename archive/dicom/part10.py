"""Reading a stored Part 10 file at ingest: validate it, locate its pixel data, build its JSON.

The file is parsed once, in an executor thread, with pydicom up to the pixel data; the pixel data
element itself is walked by hand (item headers only) so that neither a 2 GB native image nor a
1,000-fragment encapsulated one is ever read into memory. What reads will need later (DICOM JSON,
bulk data offsets, pixel data and fragment offsets) is returned to be stored in the index.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, dcmread, read_dataset
from pydicom.uid import UID

from archive.dicom import procedure
from archive.dicom.jsonmodel import BASE_URL_TOKEN, INSTANCE_URL_TOKEN, BulkRef, JsonBuilder
from archive.dicom.uids import is_valid_uid
from archive.index.values import indexed_view

# Store what arrives: value validation is the sender's business, not a reason to refuse.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE

# Values larger than this stay on disk while parsing (they become bulk data, read on demand).
DEFER_SIZE = 64 * 1024
_ITEM, _SEQ_DELIM = 0xFFFEE000, 0xFFFEE0DD
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
DEFLATED = "1.2.840.10008.1.2.1.99"
# Largest size a deflated data set may inflate to: pydicom inflates it whole, in memory, so a
# few MB of zlib stream (a "deflate bomb") would otherwise take gigabytes.
DEFLATED_MAX = 256 * 1024 * 1024

# PS3.18 Table 10.5.3-2 / PS3.4 Annex B failure reasons used by ingest.
CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH = 0xA900


class InvalidInstance(Exception):
    """The file cannot be stored; ``status`` is the failure reason for the sender."""

    def __init__(self, message: str, status: int = CANNOT_UNDERSTAND) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class PixelInfo:
    """Position of the pixel data element's value in the stored file."""

    tag: int
    vr: str
    offset: int
    length: int
    encapsulated: bool
    basic_offsets: list[int] = field(default_factory=list)
    fragments: list[tuple[int, int]] = field(default_factory=list)  # (value offset, length)

    def to_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "vr": self.vr, "offset": self.offset, "length": self.length,
                "encapsulated": self.encapsulated, "basic_offsets": self.basic_offsets,
                "fragments": self.fragments}


@dataclass
class ParsedInstance:
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    dataset_offset: int
    json: dict[str, Any]
    bulk: dict[str, BulkRef]
    pixel: PixelInfo | None
    sha256: str
    meta_mismatch: bool = False


def _u32(data: bytes, little: bool) -> int:
    return struct.unpack("<L" if little else ">L", data)[0]


def _read_exact(fp: BinaryIO, n: int, what: str) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise InvalidInstance(f"file truncated in {what}")
    return data


def _read_element_header(fp: BinaryIO, implicit: bool, little: bool) -> tuple[int, str | None, int]:
    head = _read_exact(fp, 8, "pixel data element header")
    fmt = "<HH" if little else ">HH"
    group, elem = struct.unpack(fmt, head[:4])
    tag = group << 16 | elem
    if implicit:
        return tag, None, _u32(head[4:8], little)
    vr = head[4:6]
    if vr in _LONG_VRS:
        return tag, vr.decode("ascii"), _u32(_read_exact(fp, 4, "pixel data element header"), little)
    return tag, vr.decode("latin_1"), struct.unpack("<H" if little else ">H", head[6:8])[0]


def _scan_fragments(fp: BinaryIO, start: int, file_size: int) -> tuple[list[int], list[tuple[int, int]], int]:
    """Walk encapsulated pixel data items (PS3.5 A.4); return offset table, fragments, value end."""
    pos = start
    basic: list[int] = []
    fragments: list[tuple[int, int]] = []
    first = True
    while True:
        fp.seek(pos)
        head = _read_exact(fp, 8, "encapsulated pixel data")
        group, elem, length = struct.unpack("<HHL", head)
        tag = group << 16 | elem
        if tag == _SEQ_DELIM:
            return basic, fragments, pos
        if tag != _ITEM:
            raise InvalidInstance(f"bad item tag ({group:04X},{elem:04X}) in encapsulated pixel data")
        if length == 0xFFFFFFFF or pos + 8 + length > file_size:
            raise InvalidInstance("file truncated in encapsulated pixel data")
        if first:
            if length % 4:
                raise InvalidInstance("Basic Offset Table length is not a multiple of 4")
            table = fp.read(length)
            basic = list(struct.unpack(f"<{length // 4}L", table))
            first = False
        else:
            fragments.append((pos + 8, length))
        pos += 8 + length


def _pixel_vr(tag: int, vr: str | None) -> str:
    if vr is not None:
        return vr
    if tag == 0x7FE00008:
        return "OF"
    if tag == 0x7FE00009:
        return "OD"
    return "OW"  # PS3.5 A.1: in implicit VR, pixel data is OW


def _expected_native_length(ds: Dataset) -> int | None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2  # PS3.3 C.7.6.3.1.2: two values per pixel when not compressed
    total_bits = rows * cols * samples * frames * bits
    return (total_bits + 7) // 8


def _read_pixel_data(fp: BinaryIO, ds: Dataset, implicit: bool, little: bool, file_size: int,
                     encapsulated_ts: bool | None) -> tuple[PixelInfo, int]:
    """Parse the pixel data element at the current position; return it and where it ends."""
    tag, vr, length = _read_element_header(fp, implicit, little)
    value_offset = fp.tell()
    if encapsulated_ts is not None and tag == 0x7FE00010 and (length == 0xFFFFFFFF) != encapsulated_ts:
        raise InvalidInstance(
            "PixelData is encapsulated but the transfer syntax is not a compressed one"
            if length == 0xFFFFFFFF else
            "PixelData is native but the transfer syntax is a compressed one")
    if length == 0xFFFFFFFF:
        basic, fragments, end = _scan_fragments(fp, value_offset, file_size)
        info = PixelInfo(tag, _pixel_vr(tag, vr), value_offset, end - value_offset, True,
                         basic, fragments)
        return info, end + 8
    if value_offset + length > file_size:
        raise InvalidInstance("file truncated in pixel data")
    info = PixelInfo(tag, _pixel_vr(tag, vr), value_offset, length, False)
    if tag == 0x7FE00010:
        expected = _expected_native_length(ds)
        if expected is not None and length < expected:
            raise InvalidInstance(
                f"PixelData is shorter than Rows x Columns x Samples x Frames x Bits "
                f"({length} < {expected} bytes)")
    return info, value_offset + length


def _required_uid(json: dict[str, Any], tag: str, keyword: str) -> str:
    values = json.get(tag, {}).get("Value", [None])
    if len(values) > 1:  # "1.2.3\\4.5": the first value alone would name another instance
        raise InvalidInstance(f"{keyword} has more than one value")
    value = values[0]
    if value is None:
        raise InvalidInstance(f"{keyword} is missing")
    if not is_valid_uid(value):
        raise InvalidInstance(f"{keyword} is not a valid UID")
    return str(value)


def dataset_encoding(ts: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a transfer syntax; unknown ones are explicit VR LE,
    as every transfer syntax defined after the first three is."""
    uid = UID(ts)
    if uid.is_transfer_syntax:
        return uid.is_implicit_VR, uid.is_little_endian
    return False, True


def _check_inflated_size(fp: BinaryIO, start: int, limit: int = DEFLATED_MAX) -> None:
    """Inflate the deflated data set from ``start`` in bounded steps (nothing kept) and refuse it
    if it is larger than ``limit``; zlib errors propagate (the caller refuses those too)."""
    fp.seek(start)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    while not inflater.eof and (data := fp.read(1 << 16)):
        while data:
            total += len(inflater.decompress(data, 1 << 20))
            if total > limit:
                raise InvalidInstance(f"the deflated data set inflates to more than {limit} bytes")
            data = inflater.unconsumed_tail


class _TruncationCheck:
    """The file as pydicom reads it, noting a read cut short by the end of the file: pydicom
    takes a partial element header at the end for the end of the data set, and a value whose
    length runs past the end for a shorter value, both silently."""

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self.name = getattr(fp, "name", None)
        self.short_read = False

    def read(self, size: int = -1) -> bytes:
        data = self._fp.read(size)
        if 0 < size and 0 < len(data) < size:
            self.short_read = True
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()


def _hash_range(fp: BinaryIO, start: int) -> str:
    h = hashlib.sha256()
    fp.seek(start)
    while chunk := fp.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def parse_instance(path: str, threshold: int,
                   dataset_digest: tuple[int, str] | None = None) -> ParsedInstance:
    """Validate and index-parse the Part 10 file at ``path`` (blocking: run in an executor).

    ``dataset_digest`` is (offset, sha256) of the bytes from ``offset`` on, if the caller hashed
    them while receiving; used when the offset is where the data set starts."""
    with open(path, "rb") as fp:
        fp.seek(0, 2)
        file_size = fp.tell()
        fp.seek(0)
        head = fp.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            raise InvalidInstance("not a DICOM PS3.10 file: the 'DICM' prefix and File Meta "
                                  "Information are required")
        fp.seek(0)
        try:
            return _parse(fp, path, file_size, threshold, dataset_digest)
        except InvalidInstance:
            raise
        except Exception as exc:  # pydicom raises many types on broken input
            raise InvalidInstance(f"cannot parse the data set: {type(exc).__name__}: {exc}"[:300]) from exc


def _parse(fp: BinaryIO, path: str, file_size: int, threshold: int,
           dataset_digest: tuple[int, str] | None) -> ParsedInstance:
    # Where the data set starts: after the File Meta elements as read, not as their group
    # length says (a wrong or missing group length would point the data set hash elsewhere).
    fp.seek(132)
    ts = str(_read_file_meta_info(fp).get("TransferSyntaxUID", "") or "")
    dataset_offset = fp.tell()
    if ts == DEFLATED:
        _check_inflated_size(fp, dataset_offset)  # before pydicom inflates it in memory
    fp.seek(0)
    checked = _TruncationCheck(fp)
    ds = dcmread(checked, stop_before_pixels=True, defer_size=DEFER_SIZE)
    if checked.short_read or fp.tell() > file_size:
        raise InvalidInstance("file truncated: an element runs past the end of the file")
    meta = ds.file_meta
    ts = str(meta.get("TransferSyntaxUID", "") or "")
    if not is_valid_uid(ts):
        raise InvalidInstance("File Meta has no valid TransferSyntaxUID")
    deflated = ts == DEFLATED
    pixel: PixelInfo | None = None
    if deflated:
        # The data set is one zlib stream: pydicom inflates it; offsets into it mean nothing.
        fp.seek(0)
        ds = dcmread(fp, defer_size=None)
    elif fp.tell() < file_size:
        implicit, little = dataset_encoding(ts)
        uid = UID(ts)
        encapsulated_ts = uid.is_encapsulated if uid.is_transfer_syntax else None
        pixel, end = _read_pixel_data(fp, ds, implicit, little, file_size, encapsulated_ts)
        if end < file_size:  # elements after the pixel data (e.g. trailing padding)
            fp.seek(end)
            tail = read_dataset(fp, implicit, little, defer_size=DEFER_SIZE)
            for tag in tail.keys():
                if tag >> 16 == 0xFFFE:
                    raise InvalidInstance("stray item or delimiter after the pixel data")
                ds._dict[tag] = tail._dict[tag]
    offsets_valid = not deflated and dataset_encoding(ts)[1]
    builder = JsonBuilder(threshold, offsets_valid)
    json = builder.dataset(ds, "", "latin_1")
    for ref in builder.bulk.values():  # deferred values pydicom never read: check they fit
        if ref.offset is not None and ref.offset + ref.length > file_size:
            raise InvalidInstance("file truncated: an element runs past the end of the file")
    if pixel is not None:
        key = f"{pixel.tag:08X}"
        if pixel.length > builder.inline_max:
            json[key] = {"vr": pixel.vr, "BulkDataURI": builder.add_bulk(key, pixel.offset, pixel.length)}
        elif pixel.length:
            fp.seek(pixel.offset)
            inline = base64.b64encode(fp.read(pixel.length)).decode("ascii")
            json[key] = {"vr": pixel.vr, "InlineBinary": inline}
        else:
            json[key] = {"vr": pixel.vr}
        json = dict(sorted(json.items()))
    sop_class = _required_uid(json, "00080016", "SOPClassUID")
    sop_instance = _required_uid(json, "00080018", "SOPInstanceUID")
    study = _required_uid(json, "0020000D", "StudyInstanceUID")
    series = _required_uid(json, "0020000E", "SeriesInstanceUID")
    meta_class = meta.get("MediaStorageSOPClassUID")
    meta_instance = meta.get("MediaStorageSOPInstanceUID")
    if meta_class is None or meta_instance is None:
        raise InvalidInstance("File Meta lacks MediaStorageSOPClassUID or MediaStorageSOPInstanceUID")
    # A File Meta that names another instance than its data set is common in real data
    # (re-identified or edited files); the data set is authoritative, as in DCMTK.
    mismatch = str(meta_class) != sop_class or str(meta_instance) != sop_instance
    if dataset_digest is not None and dataset_digest[0] == dataset_offset:
        sha = dataset_digest[1]
    else:
        sha = _hash_range(fp, dataset_offset)
    return ParsedInstance(ts, sop_class, sop_instance, study, series, dataset_offset, json,
                          builder.bulk, pixel, sha, mismatch)


def _encode_json(parsed: ParsedInstance) -> bytes:
    """Compressed DICOM JSON with bulk data URIs rooted at this instance's WADO-RS URL."""
    doc = procedure.add_placeholder(parsed.json)  # the study's harmonized code goes there
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    url = (f"{BASE_URL_TOKEN}/studies/{parsed.study_uid}/series/{parsed.series_uid}"
           f"/instances/{parsed.sop_instance_uid}")
    return zlib.compress(text.replace(INSTANCE_URL_TOKEN, url).encode("utf-8"), 1)


def parse_and_encode(path: str, threshold: int,
                     dataset_digest: tuple[int, str] | None) -> tuple[ParsedInstance, bytes]:
    """:func:`parse_instance` plus the stored form of its JSON: the CPU work of ingest, in one
    call that an executor (threads or a process pool) runs."""
    parsed = parse_instance(path, threshold, dataset_digest)
    try:
        encoded = _encode_json(parsed)
    except ValueError as exc:  # NaN or infinity in a float element: not representable in JSON
        raise InvalidInstance(f"value not representable in DICOM JSON: {exc}") from exc
    # Only what the index writer reads goes back: from a worker process the whole document was
    # pickled there and unpickled in the server.
    parsed.json = indexed_view(parsed.json)
    return parsed, encoded


def parse_many(jobs: list[tuple[str, tuple[int, str] | None]],
               threshold: int) -> list[tuple[ParsedInstance, bytes] | Exception]:
    """:func:`parse_and_encode` of several files in one call, each outcome a result or the
    exception it raised: one hand-off to a worker process for a batch of instances instead of
    one per instance."""
    out: list[tuple[ParsedInstance, bytes] | Exception] = []
    for path, digest in jobs:
        try:
            out.append(parse_and_encode(path, threshold, digest))
        except InvalidInstance as exc:  # its own outcome: the others of the batch go on
            out.append(exc)
        except Exception as exc:  # unexpected: as a refusal that surely pickles back
            out.append(InvalidInstance(f"cannot parse: {type(exc).__name__}: {exc}"[:300]))
    return out


def worker_ready() -> bool:
    """A no-op a worker runs at start-up, so the pool is up before the first upload."""
    return True
