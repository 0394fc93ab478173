"""PS3.15 Annex E Basic Application Level Confidentiality Profile, driven by Table E.1-1.

The table ships as ``data/annex_e.tsv`` (PS3.15 2025a, every row, with its option columns). This module
loads it, resolves each attribute's action for the options a configuration selects (PS3.15 E.3: an
option's code replaces the Basic Profile's), and applies the actions to a data set and to every item of
its sequences, at any depth (PS3.15 E.1.1: "K ... cleaned for sequences").

What the table's codes do here (PS3.15 E.1.1):

- X removes the element; Z empties it; K keeps it.
- D puts a dummy of the element's VR (``_DUMMY``), except PatientID and PatientName, which get the
  patient's keyed pseudonym, so that a patient's studies link up.
- U replaces each UID value with its keyed pseudonym ``2.25.<128-bit integer>`` (PS3.5 B.2), the same
  for the same UID under one secret: references between instances (Referenced SOP Instance UID,
  Frame of Reference UID ...) keep pointing at the pseudonym of what they referenced.
- C on a date (DA, DT) shifts it by the patient's keyed offset in days (Retain Longitudinal Temporal
  Information with Modified Dates, E.3.6); C on a time (TM) keeps it, since a shift by whole days leaves
  times of day unchanged; C on text applies the Clean Descriptors rule (:class:`Scrubber`).
- The combinations (X/Z, X/D, X/Z/D, Z/D, X/Z/U*) choose by the attribute's Type in the IOD, which this
  module does not track per SOP Class: it takes the alternative that stays conformant whatever the Type
  (:func:`concrete`). A dummy or an empty value never carries the original.

Beyond the table (documented in docs/deidentification.md): private attributes and whole Curve (50xx)
and Overlay (60xx) groups go; group lengths go (they would be wrong); unlisted person names are emptied;
unlisted dates are shifted; unlisted UIDs that name instances are replaced like listed ones.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

TABLE_PATH = Path(__file__).with_name("data") / "annex_e.tsv"

# PS3.16 CID 7050 "De-identification Method": the profile itself.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")


class Option(Enum):
    """The options of PS3.15 E.3 that have a column in Table E.1-1: (column, CID 7050 code, meaning)."""

    RETAIN_SAFE_PRIVATE = ("rtn_safe_priv", "113111", "Retain Safe Private Option")
    RETAIN_UIDS = ("rtn_uids", "113110", "Retain UIDs Option")
    RETAIN_DEVICE_IDENTITY = ("rtn_dev_id", "113109", "Retain Device Identity Option")
    RETAIN_INSTITUTION_IDENTITY = ("rtn_inst_id", "113112", "Retain Institution Identity Option")
    RETAIN_PATIENT_CHARACTERISTICS = ("rtn_pat_chars", "113108", "Retain Patient Characteristics Option")
    RETAIN_LONGITUDINAL_FULL_DATES = (
        "rtn_long_full_dates", "113106", "Retain Longitudinal Temporal Information Full Dates Option")
    RETAIN_LONGITUDINAL_MODIFIED_DATES = (
        "rtn_long_modif_dates", "113107", "Retain Longitudinal Temporal Information Modified Dates Option")
    CLEAN_DESCRIPTORS = ("clean_desc", "113105", "Clean Descriptors Option")
    CLEAN_STRUCTURED_CONTENT = ("clean_struct_cont", "113104", "Clean Structured Content Option")
    CLEAN_GRAPHICS = ("clean_graph", "113103", "Clean Graphics Option")

    @property
    def column(self) -> str:
        return self.value[0]

    @property
    def code(self) -> str:
        return self.value[1]

    @property
    def meaning(self) -> str:
        return self.value[2]


# The options this implementation carries out. The others need what it does not do: recognise safe
# private attributes (E.3.10), or clean structured content and graphics item by item (E.3.3, E.3.4).
SUPPORTED_OPTIONS = frozenset({
    Option.RETAIN_DEVICE_IDENTITY, Option.RETAIN_INSTITUTION_IDENTITY,
    Option.RETAIN_PATIENT_CHARACTERISTICS, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,
    Option.CLEAN_DESCRIPTORS,
})


@dataclass(frozen=True)
class Row:
    """One row of Table E.1-1 (or one local addition, ``source == "local"``)."""

    tag: str  # 8 hex digits; "x" for any digit of a repeating group; "GGGGEEEE" for private attributes
    vr: str
    keyword: str
    name: str
    basic: str
    options: dict[str, str] = field(default_factory=dict)  # option column -> code, where the table has one
    source: str = "E.1-1"


@dataclass(frozen=True)
class Table:
    edition: str
    rows: tuple[Row, ...]

    def exact(self) -> dict[int, Row]:
        return {int(r.tag, 16): r for r in self.rows if all(c in "0123456789ABCDEF" for c in r.tag)}


@lru_cache(maxsize=1)
def load_table(path: Path = TABLE_PATH) -> Table:
    """The shipped table; its edition comes from the ``# edition:`` header line."""
    edition = ""
    lines: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("# edition:"):
                edition = line.split(":", 1)[1].strip()
            elif not line.startswith("#") and line.strip():
                lines.append(line)
    columns = [o.column for o in Option]
    rows = []
    for rec in csv.DictReader(lines, delimiter="\t"):
        rows.append(Row(rec["tag"], rec["vr"], rec["keyword"], rec["name"], rec["basic"],
                        {c: rec[c] for c in columns if rec[c]}, rec["source"]))
    if not edition:
        raise ValueError(f"{path}: no '# edition:' line")
    return Table(edition, tuple(rows))


def resolve(row: Row, options: Iterable[Option]) -> str:
    """The row's code under ``options``; when two selected options both have a code for it, the one
    that keeps more wins (K over C), as each option is a permission to retain (PS3.15 E.3)."""
    codes = {row.options.get(o.column, "") for o in options}
    for code in ("K", "C", "X"):
        if code in codes:
            return code
    return row.basic


def concrete(code: str, vr: str) -> str:
    """One action for a combined code, without knowing the attribute's Type in the IOD (PS3.15 E.1.1).

    Values: a dummy (D) is conformant for Types 1, 2 and 3, an empty value (Z) for Types 2 and 3. For a
    sequence, a dummy would mean inventing items, so X/Z and X/Z/D empty it and X/D removes it;
    X/Z/U* keeps it with the UIDs of its items replaced (U), so that references survive."""
    if "/" not in code:
        return code
    if code == "X/Z/U*":
        return "U"
    if vr == "SQ":
        return "Z" if "Z" in code else "X"
    return "D" if "D" in code else "Z"


@lru_cache(maxsize=16)
def compiled_actions(options: frozenset[Option]) -> dict[int, str]:
    """Tag -> code (maybe combined) for every single-tag row, under ``options``."""
    return {tag: resolve(row, options) for tag, row in load_table().exact().items()}


@lru_cache(maxsize=1)
def basic_actions() -> dict[int, str]:
    """Tag -> Basic Profile code: what applies when an option's C cannot be carried out for a value
    (binary values such as Maker Note (0016,002B) or Certified Timestamp (0400,0310) have no clean form)."""
    return {tag: row.basic for tag, row in load_table().exact().items()}


# --- keyed pseudonyms -------------------------------------------------------------------------------

def keyed_digest(secret: bytes, purpose: str, value: str) -> bytes:
    """HMAC-SHA256 of ``value`` under ``secret``; ``purpose`` keeps the UID, patient and date-shift
    derivations independent of one another."""
    message = purpose.encode("ascii") + b"\0" + value.encode("utf-8", "surrogateescape")
    return hmac.new(secret, message, hashlib.sha256).digest()


def pseudonym_uid(secret: bytes, uid: str) -> str:
    """``2.25.`` and the decimal integer of a UUID (PS3.5 B.2) made from the keyed digest of ``uid``
    (RFC 9562 version 8, "custom"): at most 44 characters, never a leading zero."""
    n = int.from_bytes(keyed_digest(secret, "uid", uid)[:16], "big")
    n = (n & ~(0xF << 76)) | (0x8 << 76)  # version 8
    n = (n & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC variant
    return f"2.25.{n}"


def pseudonym_patient(secret: bytes, patient_key: str, prefix: str) -> str:
    """``prefix`` and 16 base32 characters (80 bits) of the keyed digest: fits LO, SH-free PN, CS."""
    digest = keyed_digest(secret, "patient", patient_key)[:10]
    return prefix + base64.b32encode(digest).decode("ascii")


def date_shift_days(secret: bytes, patient_key: str, max_days: int) -> int:
    """The patient's offset, in days: -max_days ... -1 (never 0, so no date is left as it was)."""
    n = int.from_bytes(keyed_digest(secret, "date-shift", patient_key)[:8], "big")
    return -(n % max_days + 1)


# --- dates -----------------------------------------------------------------------------------------

_DT = re.compile(r"(\d{4})(\d{2})?(\d{2})?((?:\d{2}){0,3}(?:\.\d{1,6})?)([+-]\d{4})?")


def shift_da(value: str, days: int) -> str:
    """A DA value moved by ``days``; a value that is not a date becomes empty (it could hold anything)."""
    v = value.strip()
    if len(v) == 10 and v[4] == v[7] == ".":  # ACR-NEMA "YYYY.MM.DD" (PS3.5 Table 6.2-1 note)
        v = v.replace(".", "")
    if len(v) != 8 or not v.isdigit():
        return ""
    try:
        d = date(int(v[:4]), int(v[4:6]), int(v[6:])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def shift_dt(value: str, days: int) -> str:
    """A DT value moved by ``days``, at its own precision; time of day and UTC offset unchanged."""
    m = _DT.fullmatch(value.strip())
    if m is None:
        return ""
    year, month, day, time, offset = m.groups()
    if time and not day:
        return ""
    try:
        d = date(int(year), int(month or 1), int(day or 1)) + timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    out = f"{d.year:04d}" + (f"{d.month:02d}" if month else "") + (f"{d.day:02d}" if day else "")
    return out + (time or "") + (offset or "")


# --- the Clean Descriptors rule ---------------------------------------------------------------------

_MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_PATTERNS = [
    re.compile(r"[^\s^]*\^\S*"),  # a DICOM person name, "DOE^JOHN"
    re.compile(r"\S+@\S+"),  # e-mail
    re.compile(r"\+?\(?\d{2,4}\)?[-.\s]\d{3}[-.\s]\d{3,4}(?!\d)"),  # telephone numbers
    re.compile(r"(?<!\d)(?:1[89]|20)\d{2}[-/.]?(?:0[1-9]|1[0-2])[-/.]?(?:0[1-9]|[12]\d|3[01])(?!\d)"),
    re.compile(r"(?<!\d)\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})(?!\d)"),  # 31.01.2020, 1/31/20
    re.compile(r"(?<![A-Za-z0-9])\d{1,2}[-\s]?" + _MONTHS + r"[-\s,]*(?:\d{4}|\d{2})(?!\d)", re.I),
    re.compile(r"(?<![A-Za-z])" + _MONTHS + r"\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4}(?!\d)", re.I),
    # a title and a name: "Dr. SMITH", "Dr Smith"; not "DR CHEST" or "MR BRAIN" (modalities)
    re.compile(r"(?<![A-Za-z])(?:(?i:dr|prof|mr|mrs|ms|miss)\.\s*[A-Z][\w'-]+"
               r"|(?:Dr|Prof|Mr|Mrs|Ms|Miss)\s+[A-Z][a-z][\w'-]*)"),
]
_TOKEN = re.compile(r"[A-Za-z0-9]+")
_DIGIT_RUN = re.compile(r"\d+")


def _looks_like_id(token: str) -> bool:
    """A medical record, accession or phone number: 5 digits in a row, or 4 with letters ("MRN1234");
    not "1024", "T1", "3D" or "512X512"."""
    longest = max((len(r) for r in _DIGIT_RUN.findall(token)), default=0)
    return longest >= 5 or (longest >= 4 and not token.isdigit())


class Scrubber:
    """The Clean Descriptors rule (PS3.15 E.3.5): keep the text, remove what looks identifying.

    Removed: the instance's own identifying values (every component of its person names, its IDs,
    institution and station names, birth date), DICOM-style names ("DOE^JOHN"), titles with a name
    ("Dr. Smith"), e-mail addresses, telephone numbers, dates in the usual numeric and month-name forms,
    and ID-like tokens (:func:`_looks_like_id`). What is left is kept, spaces collapsed.
    A name that is neither the instance's own nor written like one above is not recognised."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        words = sorted({w for w in known if w}, key=len, reverse=True)
        alternatives = "|".join(map(re.escape, words))
        self._known = (re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.I)
                       if words else None)

    def clean(self, text: str) -> str:
        out = text
        if self._known is not None:
            out = self._known.sub(" ", out)
        for pattern in _PATTERNS:
            out = pattern.sub(" ", out)
        out = _TOKEN.sub(lambda m: " " if _looks_like_id(m.group()) else m.group(), out)
        if out == text:
            return text  # nothing identifying: the text stays exactly as it was
        out = re.sub(r"\(\s*\)|\[\s*\]", " ", out)
        return re.sub(r"\s{2,}", " ", out).strip(" -_,;:/")


# --- applying the profile ----------------------------------------------------------------------------

_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT", "PN"})
_CLEANABLE_VRS = _TEXT_VRS | {"DA", "DT", "TM", "SQ"}
_DUMMY: dict[str, Any] = {
    "AE": "ANONYMOUS", "AS": "000D", "CS": "ANONYMIZED", "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED", "PN": "ANONYMIZED",
    "SH": "ANONYMIZED", "ST": "ANONYMIZED", "TM": "000000", "UC": "ANONYMIZED",
    "UR": "urn:uuid:00000000-0000-0000-0000-000000000000", "UT": "ANONYMIZED",
    "FD": 0.0, "FL": 0.0, "SL": 0, "SS": 0, "SV": 0, "UL": 0, "US": 0, "UV": 0,
    "OB": b"\0\0", "OD": b"\0" * 8, "OF": b"\0" * 4, "OL": b"\0" * 4, "OV": b"\0" * 8, "OW": b"\0\0",
}
PATIENT_ID, PATIENT_NAME = 0x00100020, 0x00100010
# A sequence whose items are the identifier itself: its D is one dummy code item, not its items kept.
_PERSON_IDENTIFICATION_CODES = 0x00401101
# Unlisted elements looked at (the rest is kept unread): names, dates, UIDs, sequences.
_UNLISTED_VRS = frozenset({"PN", "DA", "DT", "UI", "SQ"})
# UI attributes that name classes, syntaxes, coding schemes or templates, not instances: kept.
_NOT_INSTANCE_UIDS = frozenset({
    "CodingSchemeUID", "ContextUID", "MappingResourceUID", "ContextGroupExtensionCreatorUID",
    "PrivateInformationCreatorUID", "SegmentationTemplateUID", "CreatorVersionUID", "SelectorUIValue",
})


def _instance_uid_attribute(tag: int) -> bool:
    keyword = keyword_for_tag(tag)
    return bool(keyword) and "Class" not in keyword and "TransferSyntax" not in keyword \
        and keyword not in _NOT_INSTANCE_UIDS


def _vr_of(ds: Dataset, tag: int) -> str:
    raw = ds.get_item(tag)
    vr = getattr(raw, "VR", None)
    if vr in (None, "UN"):  # implicit VR, or UN that pydicom will replace with the dictionary's
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            vr = "UN"
    return str(vr)


def _values(value: Any) -> list[Any]:
    """An element's values as a list (a PersonName or a str is one value, not its characters)."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


@dataclass
class Context:
    """What one instance's de-identification needs: keys, options, and its known identifying values."""

    secret: bytes = field(repr=False)
    options: frozenset[Option]
    actions: dict[int, str]
    patient_pseudonym: str
    date_shift: int
    scrubber: Scrubber
    pseudonym_prefix: str
    id_namespace: str = ""

    @property
    def shift_dates(self) -> bool:
        return Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options


class Deidentifier:
    """Applies the table to a data set and its sequences, in place."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def dataset(self, ds: Dataset, top: bool = True) -> None:
        actions = self.ctx.actions
        for tag in list(ds.keys()):
            t = int(tag)
            group = t >> 16
            if group & 1 or t & 0xFFFF == 0 or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
                # Private attributes (X), group lengths (retired; wrong once values change), Curve Data
                # (X) and whole Overlay groups: Overlay Data and Comments are X, and the rest of the
                # group would describe a plane that is no longer there.
                del ds[tag]
                continue
            code = actions.get(t)
            if code is None:
                self._unlisted(ds, t)
            else:
                self._apply(ds, t, code, top)

    def _apply(self, ds: Dataset, tag: int, code: str, top: bool) -> None:
        vr = _vr_of(ds, tag)
        action = concrete(code, vr)
        if action == "C" and vr not in _CLEANABLE_VRS:
            action = concrete(basic_actions()[tag], vr)
        if action == "X" or (vr == "UN" and action not in ("K", "Z")):
            del ds[tag]  # an unknown VR cannot be given a dummy, a shift or a pseudonym
            return
        if action == "K" and vr != "SQ":
            return
        elem = ds[tag]
        if tag in (PATIENT_ID, PATIENT_NAME):
            elem.value = self._patient(elem, top)
        elif vr == "SQ":
            self._sequence(elem, action)
        elif action == "Z":
            elem.value = elem.empty_value
        elif action == "U" or (action == "D" and vr == "UI"):
            elem.value = self._uids(elem.value)
        elif action == "D" and elem.is_empty:
            return  # an empty value holds nothing to replace; a dummy would invent one
        elif action == "D":
            dated = vr in ("DA", "DT")
            elem.value = self._dated(elem, dummy=True) if dated else _DUMMY.get(vr, elem.empty_value)
        elif action == "C":
            self._clean(elem)

    def _patient(self, elem: DataElement, top: bool) -> Any:
        if top:  # the patient's pseudonym: PatientID and PatientName link the patient's studies
            return self.ctx.patient_pseudonym
        if elem.tag == PATIENT_ID and str(elem.value or "").strip():  # e.g. in a source-patient item
            key = f"{self.ctx.id_namespace}\0id:{str(elem.value).strip()}"
            return pseudonym_patient(self.ctx.secret, key, self.ctx.pseudonym_prefix)
        return elem.empty_value

    def _sequence(self, elem: DataElement, action: str) -> None:
        if action == "Z":
            elem.value = Sequence()
        elif action == "D" and elem.tag == _PERSON_IDENTIFICATION_CODES:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator = "ANONYMIZED", "99DEID"
            item.CodeMeaning = "ANONYMIZED"
            elem.value = Sequence([item])
        else:  # D, K, C, U: the sequence stays, its items are de-identified by the same table
            for item in elem.value:
                self.dataset(item, top=False)

    def _uids(self, value: Any) -> Any:
        out = []
        for uid in _values(value):
            uid = str(uid).strip("\0 ")
            # Well-known UIDs of the registry (PS3.6 Annex A, e.g. the standard Frames of Reference)
            # identify nothing and are kept.
            out.append(uid if not uid or uid in UID_dictionary else pseudonym_uid(self.ctx.secret, uid))
        return out[0] if len(out) == 1 else out

    def _dated(self, elem: DataElement, dummy: bool = False) -> Any:
        if not self.ctx.shift_dates:
            return _DUMMY[elem.VR] if dummy else elem.value
        shift = shift_da if elem.VR == "DA" else shift_dt
        out = [shift(str(v), self.ctx.date_shift) for v in _values(elem.value)]
        return out[0] if len(out) == 1 else (out or elem.empty_value)

    def _clean(self, elem: DataElement) -> None:
        vr = elem.VR
        if vr in ("DA", "DT"):
            elem.value = self._dated(elem)
        elif vr in _TEXT_VRS:
            out = [self.ctx.scrubber.clean(str(v)) for v in _values(elem.value)]
            elem.value = out[0] if len(out) == 1 else (out or elem.empty_value)
        # TM: a shift by whole days leaves the time of day as it is; numbers, codes: nothing to clean

    def _unlisted(self, ds: Dataset, tag: int) -> None:
        """Attributes the table does not list are kept (PS3.15 E.1.1), except what always identifies:
        person names (emptied), dates (shifted like listed ones) and UIDs of instances (replaced)."""
        vr = _vr_of(ds, tag)
        if vr not in _UNLISTED_VRS:
            return
        elem = ds[tag]
        if vr == "SQ":
            for item in elem.value:
                self.dataset(item, top=False)
        elif vr == "PN":
            elem.value = elem.empty_value
        elif vr in ("DA", "DT"):
            elem.value = self._dated(elem, dummy=True)
        elif vr == "UI" and _instance_uid_attribute(tag):
            elem.value = self._uids(elem.value)


def known_identifiers(ds: Dataset, actions: dict[int, str]) -> list[str]:
    """The instance's identifying values that the Clean Descriptors rule removes from free text:
    each component of every person name, and the whole value of every other text attribute that the
    profile removes or replaces (IDs, institution, station, addresses), plus the birth date."""
    out: list[str] = []
    for tag in ds.keys():
        t = int(tag)
        code = actions.get(t)
        if code is None or t >> 16 & 1:
            continue
        vr = _vr_of(ds, t)
        if (vr not in _TEXT_VRS and vr != "DA") or concrete(code, vr) in ("K", "C"):
            continue
        for value in _values(ds[t].value):
            text = str(value)
            if vr == "PN":
                out.extend(p for p in re.split(r"[\^=\s,]+", text) if len(p) >= 2)
            elif len(text.strip()) >= 3:
                out.append(text.strip())
    return out
