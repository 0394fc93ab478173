"""De-identification at ingest: PS3.15 Annex E Basic Application Level Confidentiality Profile.

With the options a research commons uses (PS3.15 E.3): Retain Longitudinal Temporal Information with
Modified Dates (a keyed per-patient date shift), Retain Patient Characteristics, Clean Descriptors; Retain
UIDs is off: UIDs, PatientID and PatientName become keyed pseudonyms, the same for the same input under
one secret, so that a patient's next study links up and references between instances still resolve.
The table and its actions are in :mod:`archive.deid.profile`, the quarantine rule in
:mod:`archive.deid.burnedin`, what is done to which attribute in docs/deidentification.md.

:func:`deidentify_file` is what the ingest worker calls: Part 10 in, Part 10 out, in the same transfer
syntax, with the pixel data element copied byte for byte (never decoded, never held in memory).
The secret is never logged, never written, and not in ``repr(DeidConfig)``.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import stat
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from pydicom import __version__ as pydicom_version
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, DeflatedExplicitVRLittleEndian

from archive.deid import burnedin
from archive.deid.profile import (
    BASIC_PROFILE_CODE,
    Context,
    Deidentifier,
    Option,
    Scrubber,
    compiled_actions,
    date_shift_days,
    known_identifiers,
    load_table,
    pseudonym_patient,
    pseudonym_uid,
)

__all__ = ["DeidConfig", "DeidResult", "deidentify", "deidentify_file", "ensure_secret", "load_secret"]

log = logging.getLogger("archive.deid")

MIN_SECRET_BYTES = 16
# File Meta elements that name the sending application entity (PS3.10 7.1): a station's AE title, as
# identifying as Station AE Title (0008,0055), which the table removes.
_META_REMOVED = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)
_IMPLEMENTATION_VERSION = f"PYDICOM {pydicom_version}"[:16]  # SH
_ITEM, _SEQUENCE_DELIMITER = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}


@dataclass(frozen=True)
class DeidConfig:
    """The ingest profile. ``secret`` keys every pseudonym and date shift: keep it in a file that the
    configuration names (:func:`load_secret`), never in the index, the configuration or a log."""

    secret: bytes = field(repr=False)
    retain_longitudinal_modified_dates: bool = True  # E.3.6, code 113107
    retain_patient_characteristics: bool = True  # E.3.7, code 113108
    clean_descriptors: bool = True  # E.3.5, code 113105
    retain_device_identity: bool = False  # E.3.8, code 113109
    retain_institution_identity: bool = False  # E.3.9, code 113112
    max_date_shift_days: int = 365  # dates move back by 1 ... this many days
    # Part of the patient key: give each source its own when their PatientIDs are separate number
    # spaces, so that the same number at two sites is not taken for one patient.
    id_namespace: str = ""
    pseudonym_prefix: str = "ANON"

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the pseudonym secret must be at least {MIN_SECRET_BYTES} bytes")
        if self.max_date_shift_days < 1:
            raise ValueError("max_date_shift_days must be at least 1")
        if not self.pseudonym_prefix.isalnum() or len(self.pseudonym_prefix) > 16:
            raise ValueError("pseudonym_prefix must be 1 to 16 letters or digits")

    @property
    def options(self) -> frozenset[Option]:
        chosen = {
            Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: self.retain_longitudinal_modified_dates,
            Option.RETAIN_PATIENT_CHARACTERISTICS: self.retain_patient_characteristics,
            Option.CLEAN_DESCRIPTORS: self.clean_descriptors,
            Option.RETAIN_DEVICE_IDENTITY: self.retain_device_identity,
            Option.RETAIN_INSTITUTION_IDENTITY: self.retain_institution_identity,
        }
        return frozenset(o for o, on in chosen.items() if on)


@dataclass(frozen=True)
class DeidResult:
    """What ingest needs to know. No original identifier is returned, except the study description
    (as received, before cleaning), which description harmonization maps."""

    quarantine: bool
    reason: str
    original_study_description: str


def ensure_secret(path: str | os.PathLike[str]) -> bool:
    """Make a new random secret at ``path`` (mode 0600) if there is none; True if it was made.
    Losing it later breaks the linkage of a patient's next studies to the earlier ones."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(base64.urlsafe_b64encode(secrets.token_bytes(32)) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    log.warning("made a new pseudonym secret in %s: keep it safe and backed up, apart from the data", path)
    return True


def load_secret(path: str | os.PathLike[str]) -> bytes:
    """The secret from the file the configuration names (trailing newline dropped). A file that others
    can read is used, with a warning that names the file, never its content."""
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("pseudonym secret file %s is accessible to group or others; chmod 600 it", path)
    with open(path, "rb") as f:
        secret = f.read().rstrip(b"\r\n")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{path}: the pseudonym secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


def _code_item(code: tuple[str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code[0], "DCM", code[1]
    return item


def deidentify(ds: Dataset, cfg: DeidConfig) -> DeidResult:
    """De-identify ``ds`` in place (its File Meta too, if it has one) and say whether to quarantine it."""
    quarantine, reason = burnedin.assess(ds)
    study_description = str(ds.get("StudyDescription", "") or "")
    options = cfg.options
    actions = compiled_actions(options)
    # The patient key: the original PatientID in the configured namespace; without one, the study
    # (the instances of one study still share a pseudonym and a shift; nothing else can link them).
    patient_id = str(ds.get("PatientID", "") or "").strip()
    basis = f"id:{patient_id}" if patient_id else f"study:{str(ds.get('StudyInstanceUID', '') or '').strip()}"
    key = f"{cfg.id_namespace}\0{basis}"
    ctx = Context(
        secret=cfg.secret, options=options, actions=actions,
        patient_pseudonym=pseudonym_patient(cfg.secret, key, cfg.pseudonym_prefix),
        date_shift=date_shift_days(cfg.secret, key, cfg.max_date_shift_days),
        scrubber=Scrubber(known_identifiers(ds, actions)),
        pseudonym_prefix=cfg.pseudonym_prefix, id_namespace=cfg.id_namespace)
    Deidentifier(ctx).dataset(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for tag in _META_REMOVED:
            meta.pop(tag, None)
        if meta.get("MediaStorageSOPInstanceUID"):  # Table E.1-1: U, like the SOP Instance UID it names
            meta.MediaStorageSOPInstanceUID = pseudonym_uid(cfg.secret, str(meta.MediaStorageSOPInstanceUID))
        # PS3.10 7.1: the implementation that wrote the file, now this one (the original's class UID
        # is often also the Instance Creator UID, which the table replaces).
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = _IMPLEMENTATION_VERSION
    _record_method(ds, options)
    return DeidResult(quarantine, reason, study_description)


def _record_method(ds: Dataset, options: frozenset[Option]) -> None:
    """Patient Identity Removed, De-identification Method (Code Sequence) and Longitudinal Temporal
    Information Modified, as PS3.15 E.1.1 and E.3.6 ask (PS3.3 C.7.1.1 Patient Module)."""
    codes = [BASIC_PROFILE_CODE] + [(o.code, o.meaning) for o in Option if o in options]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [f"{meaning} ({load_table().edition})" if code == BASIC_PROFILE_CODE[0]
                                 else meaning for code, meaning in codes]
    ds.DeidentificationMethodCodeSequence = Sequence([_code_item(c) for c in codes])
    if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    elif Option.RETAIN_LONGITUDINAL_FULL_DATES in options:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"


def _element_end(fp: BinaryIO, start: int, implicit: bool, little: bool, size: int) -> int:
    """Where the element starting at ``start`` ends; encapsulated values are walked item by item
    (item headers are little endian, PS3.5 A.4), nothing else is read."""
    fp.seek(start)
    head = fp.read(8)
    if len(head) < 8:
        raise ValueError("file truncated in the pixel data element header")
    u32 = "<L" if little else ">L"
    if implicit:
        length, pos = struct.unpack(u32, head[4:8])[0], start + 8
    elif head[4:6] in _LONG_VRS:
        length, pos = struct.unpack(u32, fp.read(4))[0], start + 12
    else:
        length, pos = struct.unpack("<H" if little else ">H", head[6:8])[0], start + 8
    if length != 0xFFFFFFFF:
        end = pos + length
    else:
        while True:
            fp.seek(pos)
            item = fp.read(8)
            if len(item) < 8:
                raise ValueError("file truncated in encapsulated pixel data")
            group, elem, item_length = struct.unpack("<HHL", item)
            if (group, elem) == _SEQUENCE_DELIMITER:
                end = pos + 8
                break
            if (group, elem) != _ITEM:
                raise ValueError("bad item in encapsulated pixel data")
            pos += 8 + item_length
    if end > size:
        raise ValueError("file truncated in the pixel data")
    return end


def _copy_range(src: BinaryIO, dst: BinaryIO, start: int, end: int) -> None:
    src.seek(start)
    left = end - start
    while left:
        chunk = src.read(min(left, 1 << 20))
        if not chunk:
            raise ValueError("file truncated in the pixel data")
        dst.write(chunk)
        left -= len(chunk)


def _write(out: BinaryIO, ds: Dataset, ts: UID) -> None:
    """Preamble, File Meta and data set (without the pixel data if it is to be copied)."""
    if ts.is_transfer_syntax:
        dcmwrite(out, ds, enforce_file_format=True)
        return
    # A transfer syntax pydicom does not know (a newer one such as Deflated Image Frame Compression,
    # 1.2.840.10008.1.2.8.1, or a private one): its data set is explicit VR little endian, as that of
    # every transfer syntax defined since the first three is; pydicom's dcmwrite refuses to guess.
    out.write(ds.preamble + b"DICM")
    fp = DicomFileLike(out)
    write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)


def deidentify_file(src_path: str, dst_path: str, cfg: DeidConfig) -> DeidResult:
    """Read the Part 10 file ``src_path``, de-identify it, write it to ``dst_path`` (same transfer
    syntax, a zero preamble: the original's could hold anything, e.g. a TIFF header).

    The data set is parsed up to the pixel data; the pixel data element (native or encapsulated) is then
    copied from the source as it is. Deflated files, and the rare file with elements after its pixel
    data, are read and written whole by pydicom instead (the pixel data bytes are still unchanged)."""
    if os.path.abspath(src_path) == os.path.abspath(dst_path):
        raise ValueError("deidentify_file writes a new file: the source is read while it is written")
    with open(src_path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        ds = dcmread(fp, stop_before_pixels=True)
        ts = UID(str(ds.file_meta.get("TransferSyntaxUID", "") or ""))
        pixels: tuple[int, int] | None = None
        whole = ts == DeflatedExplicitVRLittleEndian
        if not whole and fp.tell() < size:
            # A transfer syntax pydicom does not know is explicit VR little endian, as all new ones are.
            implicit, little = (ts.is_implicit_VR, ts.is_little_endian) if ts.is_transfer_syntax \
                else (False, True)
            start = fp.tell()
            end = _element_end(fp, start, implicit, little, size)
            pixels, whole = (start, end), end < size
        if whole:
            fp.seek(0)
            ds, pixels = dcmread(fp), None
        result = deidentify(ds, cfg)
        ds.preamble = b"\0" * 128
        try:
            with open(dst_path, "wb") as out:
                _write(out, ds, ts)
                if pixels is not None:
                    _copy_range(fp, out, *pixels)
        except BaseException:
            if os.path.exists(dst_path):
                os.unlink(dst_path)
            raise
    return result
