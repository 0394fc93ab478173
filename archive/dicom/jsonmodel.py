"""DICOM JSON (PS3.18 Annex F) of a parsed data set, with BulkDataURIs for large binary values.

Built once at ingest and stored, so ``/metadata`` never parses a file. pydicom's own
``Dataset.to_json_dict`` is the reference, but it converts every element through several layers
(5 ms for a CT header); the fast path here turns the common VRs into JSON straight from the raw
bytes and hands everything unusual (ambiguous or unknown VRs, UN, private tags in implicit VR,
character sets other than Latin-1/UTF-8, odd values) to pydicom, element by element. The tests
compare the result with pydicom's for every sample file.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

# BulkDataURIs are built before the instance's URL is known: INSTANCE_URL_TOKEN is replaced by
# "BASE_URL_TOKEN/studies/…/instances/…" when the JSON is stored, and BASE_URL_TOKEN by the
# server's public DICOMweb root when a response is sent (the host is not known at ingest).
INSTANCE_URL_TOKEN = "@@INSTANCE@@"
BASE_URL_TOKEN = "@@BASE@@"

BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_STRINGS = frozenset({"AS", "CS", "DA", "DT", "TM"})
_TEXT = frozenset({"LO", "SH", "UC"})
_SINGLE_TEXT = frozenset({"LT", "ST", "UT"})
_NUMBERS = {
    "US": ("H", 2, int), "SS": ("h", 2, int), "UL": ("L", 4, int), "SL": ("l", 4, int),
    "FL": ("f", 4, float), "FD": ("d", 8, float), "SV": ("q", 8, int), "UV": ("Q", 8, int),
}
_FAST_CHARSETS = {"": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 6": "latin_1",
                  "ISO 2022 IR 6": "latin_1", "ISO_IR 192": "utf_8"}


class _Fallback(Exception):
    """The fast path declines an element; pydicom converts it."""


@dataclass
class BulkRef:
    """Where a bulk value lives in the stored file (``offset`` None: re-parse to get it)."""

    offset: int | None
    length: int


@dataclass
class JsonResult:
    json: dict[str, Any]
    bulk: dict[str, BulkRef] = field(default_factory=dict)


class JsonBuilder:
    """Converts one data set; ``offsets_valid`` when element positions are file offsets."""

    def __init__(self, threshold: int, offsets_valid: bool) -> None:
        self.inline_max = (threshold // 4) * 3
        self.offsets_valid = offsets_valid
        self.bulk: dict[str, BulkRef] = {}

    # -- public -----------------------------------------------------------------------------
    def dataset(self, ds: Dataset, path: str = "", encoding: str | None = None) -> dict[str, Any]:
        encoding = self._encoding(ds, encoding)
        out: dict[str, Any] = {}
        for tag in sorted(ds._dict):
            if tag >> 16 == 0x0002:  # File Meta belongs to the file, not the data set
                continue
            key = f"{tag:08X}"
            out[key] = self.element(ds, tag, f"{path}{key}", encoding)
        return out

    def bulk_uri(self, path: str) -> str:
        return f"{INSTANCE_URL_TOKEN}/bulk/{path}"

    def add_bulk(self, path: str, offset: int | None, length: int) -> str:
        self.bulk[path] = BulkRef(offset if self.offsets_valid else None, length)
        return self.bulk_uri(path)

    # -- elements ---------------------------------------------------------------------------
    def element(self, ds: Dataset, tag: int, path: str, encoding: str | None) -> dict[str, Any]:
        raw = ds._dict[tag]
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
            return self._deferred(ds, tag, raw, path)
        if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF:
            try:
                return self._fast(ds, tag, raw, path, encoding)
            except (_Fallback, UnicodeDecodeError, ValueError, struct.error):
                pass
        return self._slow(ds, tag, path, encoding)

    def _deferred(self, ds: Dataset, tag: int, raw: RawDataElement, path: str) -> dict[str, Any]:
        """A value left on disk by ``defer_size``: binary ones become bulk data unread."""
        vr = raw.VR or _dict_vr(tag)
        if vr in BYTES_VRS or vr == "UN":
            return {"vr": vr, "BulkDataURI": self.add_bulk(path, raw.value_tell, raw.length)}
        return self._slow(ds, tag, path, None)

    def _fast(self, ds: Dataset, tag: int, raw: RawDataElement, path: str,
              encoding: str | None) -> dict[str, Any]:
        vr = _resolve_vr(ds, tag, raw)
        if vr == "SQ" or " or " in vr:
            raise _Fallback  # items need recursion; ambiguous VRs need the data set's context
        if vr == "UN":
            vr = "OB-UN"  # binary, reported as UN below
        value: bytes = raw.value or b""
        if not value:
            return {"vr": "UN" if vr == "OB-UN" else vr}
        if vr == "OB-UN":
            vr = "UN"
            if len(value) > self.inline_max:
                return {"vr": vr, "BulkDataURI": self.add_bulk(path, raw.value_tell, len(value))}
            return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
        if vr in BYTES_VRS:
            if len(value) > self.inline_max:
                return {"vr": vr, "BulkDataURI": self.add_bulk(path, raw.value_tell, len(value))}
            return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
        if vr in _NUMBERS:
            fmt, size, _ = _NUMBERS[vr]
            if len(value) % size:
                raise _Fallback
            order = "<" if raw.is_little_endian else ">"
            return {"vr": vr, "Value": list(struct.unpack(f"{order}{len(value) // size}{fmt}", value))}
        return self._fast_string(vr, value, encoding)

    def _fast_string(self, vr: str, value: bytes, encoding: str | None) -> dict[str, Any]:
        if vr in _STRINGS:
            items = value.decode("latin_1").rstrip(" \x00").split("\\")
        elif vr == "UI":
            items = value.decode("latin_1").rstrip("\0 ").split("\\")
        elif vr == "AE":
            items = [s.strip() for s in value.decode("latin_1").split("\\")]
        elif vr == "UR":
            items = [value.decode("latin_1").rstrip()]
        elif vr == "IS" or vr == "DS":
            text = value.decode("latin_1").strip(" \x00")
            if not text:
                return {"vr": vr}
            parts = text.split("\\")
            if any(not p.strip() for p in parts):
                raise _Fallback
            conv = int if vr == "IS" else float
            return {"vr": vr, "Value": [conv(p) for p in parts]}
        elif encoding is None:
            raise _Fallback
        elif vr in _TEXT:
            items = [s.rstrip("\0 ") for s in value.decode(encoding).split("\\")]
        elif vr in _SINGLE_TEXT:
            items = [value.decode(encoding).rstrip("\0 ")]
        elif vr == "PN":
            text = value.rstrip(b"\x00 ").decode(encoding)
            if "=" in text:
                raise _Fallback
            if not text:
                return {"vr": vr}
            return {"vr": vr, "Value": [{"Alphabetic": s} for s in text.split("\\")]}
        else:
            raise _Fallback
        if len(items) == 1 and not items[0]:
            return {"vr": vr}
        return {"vr": vr, "Value": items}

    def _slow(self, ds: Dataset, tag: int, path: str, encoding: str | None) -> dict[str, Any]:
        elem: DataElement = ds[tag]
        if elem.VR == "SQ":
            items = [self.dataset(item, f"{path}/{i}/", encoding) for i, item in enumerate(elem.value)]
            return {"vr": "SQ", "Value": items}

        def handler(e: DataElement) -> str:
            return self.add_bulk(path, e.file_tell, len(e.value))

        return elem.to_json_dict(handler, (self.inline_max // 3) * 4)

    @staticmethod
    def _encoding(ds: Dataset, inherited: str | None) -> str | None:
        """Python codec for the fast path, or None when pydicom must decode text."""
        if 0x00080005 not in ds._dict:
            return inherited
        value = ds.get("SpecificCharacterSet", "")
        if not isinstance(value, str):
            return None  # several character sets (code extensions)
        return _FAST_CHARSETS.get(value.strip())


def _private_vr(ds: Dataset, tag: int) -> str:
    """pydicom's rule (hooks._private_vr_for_tag): creators are LO, known private tags get
    their dictionary VR, the rest stay UN."""
    element = tag & 0xFFFF
    if 0x0010 <= element <= 0x00FF:
        return "LO"
    if element & 0xFF00:
        creator_raw = ds._dict.get((tag & 0xFFFF0000) | (element >> 8))
        if creator_raw is None:
            return "UN"
        if isinstance(creator_raw, RawDataElement):
            creator = (creator_raw.value or b"").decode("latin_1").rstrip("\0 ")
        else:
            creator = str(creator_raw.value or "")
        if creator:
            try:
                return private_dictionary_VR(tag, creator)
            except KeyError:
                pass
    return "UN"


def _resolve_vr(ds: Dataset, tag: int, raw: RawDataElement) -> str:
    """The VR pydicom would give ``raw`` (hooks.raw_element_vr with replace_un_with_known_vr)."""
    vr = raw.VR
    if vr is None:
        if tag >> 16 & 1:
            return _private_vr(ds, tag)
        try:
            return dictionary_VR(tag)
        except KeyError:
            return "UL" if tag & 0xFFFF == 0 else "UN"
    if vr == "UN":
        if tag >> 16 & 1:
            return _private_vr(ds, tag)
        if raw.value is None or len(raw.value) < 0xFFFF:
            try:
                return dictionary_VR(tag)
            except KeyError:
                pass
    return vr


def _dict_vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError as exc:
        raise _Fallback from exc
    if " or " in vr:
        raise _Fallback
    return vr


def to_json(ds: Dataset, threshold: int, offsets_valid: bool) -> JsonResult:
    """DICOM JSON of ``ds`` (without group 0002) and the bulk values it points to."""
    builder = JsonBuilder(threshold, offsets_valid)
    result = builder.dataset(ds, "", "latin_1")
    return JsonResult(result, builder.bulk)
