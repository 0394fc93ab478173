"""De-identification at ingest (archive.deid): PS3.15 Annex E with the research-commons options.

The main test plants a recognisable marker of the right VR in every attribute of Table E.1-1 that a
real sample lacks (and keeps the sample's own, real values where it has them), at the top level and again
in a nested sequence, adds private, overlay and curve elements, runs deidentify_file, and then searches the
output file's bytes for every value that must be gone.
"""

from __future__ import annotations

import copy
import logging
import re
import statistics
import struct
import time
import zlib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.datadict import DicomDictionary, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from archive.deid import DeidConfig, deidentify, deidentify_file, load_secret
from archive.deid.burnedin import assess
from archive.deid.profile import (
    Option,
    Scrubber,
    concrete,
    date_shift_days,
    load_table,
    pseudonym_uid,
    resolve,
    shift_da,
    shift_dt,
)
from archive.dicom.part10 import parse_instance
from archive.dicom.uids import is_valid_uid
from tests import synth
from tests.samples import IN_CI, SHARED_SAMPLES, shared_available

SECRET = b"test-secret-not-for-production-0123456789"
CFG = DeidConfig(SECRET)
TABLE = load_table()
EXACT = TABLE.exact()
# Command and File Meta groups are not data set attributes; (FFFA,FFFA) and (FFFC,FFFC) come after the
# pixel data, which sends a file down the read-it-whole path: test_elements_after_pixel_data has them.
NOT_PLANTED_GROUPS = {0x0000, 0x0002, 0xFFFA, 0xFFFC}
UNLISTED_INSTANCE_UIDS = ("MultiFrameSourceSOPInstanceUID", "ReferencedFiducialUID",
                          "TargetFrameOfReferenceUID", "EquipmentFrameOfReferenceUID", "AssertionUID",
                          "ReferencedColorPaletteInstanceUID")
RELATED_SERIES = 0x00081250  # an unlisted sequence: kept, its items de-identified like the data set


def sample(shared: str, bundled: str) -> Path:
    """A real vendor file from ../shared/dicom-samples, else pydicom's bundled one (not under CI)."""
    if shared_available():
        return SHARED_SAMPLES / shared
    if IN_CI:
        pytest.fail(f"CI needs the shared DICOM samples at {SHARED_SAMPLES}")
    from pydicom.data import get_testdata_file

    path = get_testdata_file(bundled, download=False)
    if path is None:
        pytest.skip(f"pydicom's {bundled} is not installed")
    return Path(str(path))


# --- planting PHI --------------------------------------------------------------------------------

@dataclass
class Plan:
    """What the output must not contain, and what it must keep."""

    gone: dict[bytes, str] = field(default_factory=dict)  # needle -> where it was planted
    real: dict[bytes, int] = field(default_factory=dict)  # the sample's own values: needle -> tag
    gone_values: list[tuple[int, object]] = field(default_factory=list)  # top level, not searchable
    kept: list[tuple[int, object]] = field(default_factory=list)  # top level: value must be unchanged
    dates: list[tuple[int, str]] = field(default_factory=list)  # top-level DA planted: tag, value


class Planter:
    def __init__(self) -> None:
        self.plan = Plan()
        self.n = 0
        self.year = 1000  # each planted date gets its own even year: a shifted one never equals another

    def next_date(self) -> str:
        self.year += 2
        return f"{self.year:04d}0615"

    def marker(self, vr: str) -> tuple[object, list[bytes]]:
        """A value of ``vr`` and the byte strings by which it can be found in a file."""
        self.n += 1
        n = self.n
        text = f"PHIMARK{n:05d}"
        if vr == "PN":
            return f"{text}^GIVEN{n:05d}", [text.encode(), f"GIVEN{n:05d}".encode()]
        if vr in ("LO", "LT", "SH", "ST", "UT", "UC"):
            return text, [text.encode()]
        if vr in ("AE", "CS"):
            return f"PHI{n:05d}", [f"PHI{n:05d}".encode()]
        if vr == "UI":
            return f"1.2.999.{n}.7", [f"1.2.999.{n}.7".encode()]
        if vr == "UR":
            return f"http://{text.lower()}.example", [text.lower().encode()]
        if vr == "DA":
            d = self.next_date()
            return d, [d.encode()]
        if vr == "DT":
            d = self.next_date() + "101500"
            return d, [d.encode()]
        if vr in ("OB", "OW", "UN"):
            return f"{text}X".encode(), [text.encode()]
        if vr == "TM":
            return f"{n % 24:02d}{n % 60:02d}17", []
        if vr == "AS":
            return "077Y", []
        if vr == "DS":
            return f"{n}.25", []
        if vr == "IS":
            return str(n), []
        if vr in ("FL", "FD"):
            return n + 0.5, []
        return n, []  # US, SS, UL, SL ...

    def sequence_item(self) -> tuple[Dataset, list[bytes]]:
        """An item holding a person name and a referenced instance: what a sequence's D, K, C or U
        must still de-identify inside it."""
        item = Dataset()
        name, needles = self.marker("PN")
        uid, uid_needles = self.marker("UI")
        item.PersonName = name
        item.ReferencedSOPInstanceUID = uid
        return item, needles + uid_needles

    def plant(self, ds: Dataset, nested: bool) -> None:
        plan = self.plan
        for tag, row in sorted(EXACT.items()):
            if tag >> 16 in NOT_PLANTED_GROUPS or (nested and row.vr == "SQ"):
                continue
            action = concrete(resolve(row, CFG.options), row.vr)
            where = f"{'nested ' if nested else ''}{row.keyword} ({tag:08X}, {action})"
            if tag in ds:
                self.real(ds, tag, action, where, nested)
                continue
            if row.vr == "SQ":
                item, needles = self.sequence_item()
                ds.add_new(tag, "SQ", Sequence([item]))
                plan.gone.update((n, where) for n in needles)
                continue
            value, needles = self.marker(row.vr)
            ds.add_new(tag, row.vr, value)
            if action == "K" or (action == "C" and row.vr == "TM"):  # kept by an option; times kept
                if not nested:
                    plan.kept.append((tag, value))
            elif needles:
                plan.gone.update((n, where) for n in needles)
            elif not nested:
                plan.gone_values.append((tag, value))
            if row.vr == "DA" and not nested:
                plan.dates.append((tag, str(value)))

    def plant_unlisted(self, ds: Dataset) -> None:
        """Attributes the table does not list but that always identify: every person name, date and
        date-time of PS3.6 outside the table, and UIDs of instances."""
        tags = [t for t, entry in DicomDictionary.items()
                if entry[0] in ("PN", "DA", "DT") and t not in EXACT and t >> 16 not in NOT_PLANTED_GROUPS
                and t >> 16 != 0x0004 and not 0x5000 <= t >> 16 <= 0x60FF]
        tags += [tag_for_keyword(k) for k in UNLISTED_INSTANCE_UIDS]
        for tag in sorted(t for t in tags if t is not None and t not in ds):
            vr = DicomDictionary[tag][0]
            value, needles = self.marker(vr)
            ds.add_new(tag, vr, value)
            self.plan.gone.update((n, f"unlisted {DicomDictionary[tag][4]}") for n in needles)

    def real(self, ds: Dataset, tag: int, action: str, where: str, nested: bool) -> None:
        """The sample's own value: gone unless kept or cleaned (a clean description stays)."""
        elem = ds[tag]
        if action == "K" or elem.VR in ("SQ", "UN", "TM") or (action == "C" and elem.VR not in ("DA", "DT")):
            if action == "K" and not nested and elem.VR != "SQ":
                self.plan.kept.append((tag, elem.value))
            return
        text = str(elem.value).strip()
        if len(text) >= 6:  # shorter real values ("CT", "1") could occur anywhere
            needle = text.encode("latin-1", "replace")
            self.plan.gone[needle] = f"real {where}"
            self.plan.real[needle] = tag


def plant_everything(ds: Dataset) -> Plan:
    planter = Planter()
    nested = Dataset()
    planter.plant(ds, nested=False)
    planter.plant_unlisted(ds)
    planter.plant(nested, nested=True)
    for target in (ds, nested):  # private attributes, with their creator
        block = target.private_block(0x0009, "PHIMARK CREATOR", create=True)
        block.add_new(0x01, "LO", "PHIMARKPRIVATE")
    planter.plan.gone[b"PHIMARK CREATOR"] = "private creator"
    planter.plan.gone[b"PHIMARKPRIVATE"] = "private attribute"
    ds.add_new(0x60000010, "US", 8)  # an overlay plane, and a curve (retired), each with marker text
    ds.add_new(0x60000011, "US", 8)
    ds.add_new(0x60000022, "LO", "PHIMARKOVERLAYDESC")
    ds.add_new(0x60003000, "OB", b"PHIMARKOVERLAYDATA")
    ds.add_new(0x60004000, "LT", "PHIMARKOVERLAYCOMMENT")
    ds.add_new(0x50000022, "LO", "PHIMARKCURVEDESC")
    for needle in (b"PHIMARKOVERLAY", b"PHIMARKCURVE"):
        planter.plan.gone[needle] = "overlay or curve group"
    if RELATED_SERIES in ds:
        ds[RELATED_SERIES].value.append(nested)
    else:
        ds.add_new(RELATED_SERIES, "SQ", Sequence([nested]))
    return planter.plan


PLANT_SAMPLES = [  # (shared sample, pydicom's bundled fallback)
    ("transfer-syntax/CT_LittleEndianExplicit.dcm", "CT_small.dcm"),  # native, GE private groups
    ("transfer-syntax/CT_JPEG2000.dcm", "JPEG2000.dcm"),  # encapsulated
    ("transfer-syntax/CT_BigEndianExplicit.dcm", "MR_small_bigendian.dcm"),
    ("transfer-syntax/CT_LittleEndianImplicit.dcm", "MR_small_implicit.dcm"),
    ("transfer-syntax/CT_DeflatedExplicitVRLittleEndian.dcm", "image_dfl.dcm"),  # read and written whole
    ("mr/MR_Siemens_with_overlays.dcm", "examples_overlay.dcm"),
    ("multiframe/EnhancedMR_emri_small_10f_RLE.dcm", "MR_small_RLE.dcm"),  # functional groups
    ("seg/SEG_ct_binary_highdicom.dcm", "liver_1frame.dcm"),
    ("non-image/SR_comprehensive_fo-dicom.dcm", "test-SR.dcm"),
    ("rt/RTSTRUCT.dcm", "rtplan.dcm"),  # pydicom's rtstruct.dcm has no File Meta
    ("us/US_RLE_no_pixel_spacing.dcm", "examples_ybr_color.dcm"),
]


def _holders(ds: Dataset, needle: str) -> set[int]:
    """Tags of the elements (at any depth) whose value contains ``needle``."""
    found: set[int] = set()
    for elem in ds.iterall():
        if elem.VR != "SQ" and needle in str(elem.value):
            found.add(int(elem.tag))
    return found


def coincidence(after: Dataset, needle: bytes, tag: int | None) -> bool:
    """A real value found again only inside other, kept attributes ("TOSHIBA" of an Institution Name
    inside the Manufacturer "TOSHIBA_MEC", "000000000" inside a decimal): not a survivor."""
    if tag is None:
        return False  # planted markers are unique: any occurrence is a survivor
    holders = _holders(after, needle.decode("latin-1"))
    return bool(holders) and tag not in holders


def file_bytes(path: Path) -> bytes:
    """The file as it can be searched: a deflated data set (PS3.5 A.5) is inflated first."""
    data = path.read_bytes()
    meta_end = 144 + struct.unpack("<L", data[140:144])[0]  # after (0002,0000) Group Length
    if b"1.2.840.10008.1.2.1.99" not in data[132:meta_end]:
        return data
    return data[:meta_end] + zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)


def _pixel_bytes(ds: Dataset) -> bytes | None:
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            return bytes(ds[keyword].value)
    return None


@pytest.mark.parametrize("shared,bundled", PLANT_SAMPLES, ids=[s for s, _ in PLANT_SAMPLES])
def test_no_planted_or_real_identifier_survives(tmp_path: Path, shared: str, bundled: str) -> None:
    original = dcmread(sample(shared, bundled))
    plan = plant_everything(original)
    src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
    original.save_as(src, enforce_file_format=True)
    written = file_bytes(src)
    missing_from_input = [n for n in plan.gone if n not in written]
    assert not missing_from_input[:5], "the planted values must be in the input, or the test proves nothing"

    deidentify_file(str(src), str(dst), CFG)
    data = file_bytes(dst)
    before, after = dcmread(src), dcmread(dst)
    survivors = sorted(where for needle, where in plan.gone.items()
                       if needle in data and not coincidence(after, needle, plan.real.get(needle)))
    assert not survivors, f"{len(survivors)} identifying values survive: {survivors[:20]}"

    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    assert _pixel_bytes(after) == _pixel_bytes(before)
    for tag, value in plan.gone_values:
        assert tag not in after or after[tag].value != value, f"{tag:08X} kept {value!r}"
    for tag, value in plan.kept:
        assert tag in after and after[tag].value == value, f"{tag:08X} should be kept as {value!r}"
    patient = str(before.get("PatientID", "") or "").strip()  # without one, the study is the key
    key = f"\0id:{patient}" if patient else f"\0study:{before.StudyInstanceUID}"
    offset = date_shift_days(SECRET, key, CFG.max_date_shift_days)
    for tag, value in plan.dates:  # every date moved by the patient's one offset
        expected = date(int(value[:4]), 6, 15).toordinal() + offset
        assert date.fromordinal(expected).strftime("%Y%m%d").rjust(8, "0") == after[tag].value
    assert after.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in after.DeidentificationMethodCodeSequence]
    assert set(codes) == {"113100", "113105", "113107", "113108"}
    assert after.LongitudinalTemporalInformationModified == "MODIFIED"
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
    assert after.SOPInstanceUID == pseudonym_uid(SECRET, before.SOPInstanceUID)
    assert not any(tag.group & 1 for tag in after.keys())
    assert not any(tag.group & 1 for tag in after[RELATED_SERIES].value[-1].keys())
    parse_instance(str(dst), 1024)  # what ingest would make of it: a valid, storable instance


def test_table_is_the_whole_standard_table() -> None:
    assert TABLE.edition == "DICOM PS3.15 2025a"
    standard = [r for r in TABLE.rows if r.source == "E.1-1"]
    assert len(standard) == 631  # 627 tags, 3 repeating groups, private attributes
    assert len(EXACT) == len({r.tag for r in TABLE.rows if "x" not in r.tag and r.tag != "GGGGEEEE"})
    codes = {"D", "Z", "X", "K", "C", "U", "X/Z", "X/D", "X/Z/D", "Z/D", "X/Z/U*"}
    assert {r.basic for r in TABLE.rows} <= codes
    assert {c for r in TABLE.rows for c in r.options.values()} <= {"K", "C", "X"}
    names = {r.keyword: r for r in TABLE.rows}
    assert names["PatientName"].basic == "Z" and names["PatientID"].basic == "Z/D"
    assert names["StudyDate"].options == {"rtn_long_full_dates": "K", "rtn_long_modif_dates": "C"}
    assert names["PatientBirthDate"].basic == "Z" and not names["PatientBirthDate"].options
    assert names["PatientAge"].options == {"rtn_pat_chars": "K"}
    assert names["ReferencedImageSequence"].basic == "X/Z/U*"


def test_actions_under_the_commons_options() -> None:
    def action(keyword: str) -> str:
        row = next(r for r in TABLE.rows if r.keyword == keyword)
        return concrete(resolve(row, CFG.options), row.vr)

    assert CFG.options == {Option.RETAIN_LONGITUDINAL_MODIFIED_DATES, Option.RETAIN_PATIENT_CHARACTERISTICS,
                           Option.CLEAN_DESCRIPTORS}
    assert [action(k) for k in ("PatientSex", "PatientAge", "PatientSize", "PatientWeight")] == ["K"] * 4
    assert action("StudyDate") == action("AcquisitionDateTime") == action("StudyTime") == "C"
    assert action("StudyDescription") == action("SeriesDescription") == action("ProtocolName") == "C"
    assert action("PatientBirthDate") == "Z"  # no option retains it: emptied (Patient's Age is kept)
    assert action("InstitutionName") == "D" and action("ReferencedStudySequence") == "Z"
    assert action("SourceImageSequence") == "U" and action("FrameOfReferenceUID") == "U"
    assert action("OperatorIdentificationSequence") == "X" and action("OtherPatientIDs") == "X"


# --- consistency across instances, studies and patients ----------------------------------------

def _instance(patient_id: str, study: str, frame_of_reference: str, day: str, **extra: object) -> Dataset:
    ds = synth.dataset(study=study, patient_id=patient_id, patient_name=f"{patient_id}^NAME")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = day
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PatientSex, ds.PatientAge, ds.PatientWeight, ds.PatientSize = "F", "054Y", "61.5", "1.68"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def _days(after: str, before: str) -> int:
    def parse(v: str) -> date:
        return date(int(v[:4]), int(v[4:6]), int(v[6:]))

    return (parse(after) - parse(before)).days


def test_pseudonyms_and_dates_link_a_patients_studies() -> None:
    frame = synth.uid()
    first = _instance("PAT-A", synth.uid(), frame, "20240102")
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = first.SOPClassUID, first.SOPInstanceUID
    second = _instance("PAT-A", first.StudyInstanceUID, frame, "20240102",
                       SourceImageSequence=Sequence([ref]))
    later = _instance("PAT-A", synth.uid(), frame, "20250310")  # the patient's next study
    other = _instance("PAT-B", synth.uid(), synth.uid(), "20240102")
    originals = [copy.deepcopy(d) for d in (first, second, later, other)]
    for ds in (first, second, later, other):
        deidentify(ds, CFG)

    assert first.PatientID == second.PatientID == later.PatientID != other.PatientID
    assert str(first.PatientName) == first.PatientID  # the name is the same pseudonym
    assert first.StudyInstanceUID == second.StudyInstanceUID != later.StudyInstanceUID
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID == later.FrameOfReferenceUID
    assert first.FrameOfReferenceUID != originals[0].FrameOfReferenceUID
    # the reference now names the pseudonym of the instance it referenced
    assert second.SourceImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    shifts = [_days(d.StudyDate, o.StudyDate) for d, o in zip((first, second, later, other), originals,
                                                                strict=True)]
    assert shifts[0] == shifts[1] == shifts[2] and -365 <= shifts[0] <= -1
    assert shifts[3] != shifts[0]
    assert _days(later.StudyDate, first.StudyDate) == _days("20250310", "20240102")  # intervals kept
    for d in (first, other):  # Retain Patient Characteristics
        assert (d.PatientSex, d.PatientAge, str(d.PatientWeight), str(d.PatientSize)) == ("F", "054Y", "61.5",
                                                                                       "1.68")
    for uid in (first.SOPInstanceUID, first.StudyInstanceUID, first.FrameOfReferenceUID):
        assert is_valid_uid(uid) and uid.startswith("2.25.")


def test_real_references_survive_between_vendor_files(tmp_path: Path) -> None:
    """highdicom's SR and parametric map of the CT slice they were derived from (one patient, one
    study): after de-identification they still point at it."""
    if not shared_available():
        pytest.skip("needs the shared samples (pydicom bundles no such set)")
    names = ["ct/CT_small_highdicom.dcm", "non-image/SR_comprehensive3D_highdicom.dcm",
             "non-image/ParametricMap_float32.dcm"]
    before = [dcmread(SHARED_SAMPLES / n) for n in names]
    after = []
    for i, name in enumerate(names):
        deidentify_file(str(SHARED_SAMPLES / name), str(tmp_path / f"{i}.dcm"), CFG)
        after.append(dcmread(tmp_path / f"{i}.dcm"))
    ct, sr, pm = after
    assert before[0].SOPInstanceUID in {e.value for e in before[1].iterall()
                                        if e.keyword == "ReferencedSOPInstanceUID"}
    references = {e.value for d in (sr, pm) for e in d.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
    assert ct.SOPInstanceUID in references
    assert before[0].SOPInstanceUID not in references
    assert ct.StudyInstanceUID == sr.StudyInstanceUID == pm.StudyInstanceUID
    assert ct.FrameOfReferenceUID == pm.FrameOfReferenceUID
    assert ct.PatientID == sr.PatientID == pm.PatientID
    shifts = {_days(a.StudyDate, b.StudyDate) for a, b in zip(after, before, strict=True)}
    assert len(shifts) == 1


def test_date_shifts_spread_over_patients() -> None:
    shifts = {date_shift_days(SECRET, f"\0id:P{i:04d}", 365) for i in range(200)}
    assert len(shifts) > 150 and min(shifts) >= -365 and max(shifts) <= -1


def test_same_secret_same_output_other_secret_other_pseudonyms(tmp_path: Path) -> None:
    src = tmp_path / "in.dcm"
    synth.dataset(patient_id="PAT-C").save_as(src, enforce_file_format=True)
    outputs = []
    for i, secret in enumerate((SECRET, SECRET, b"another-secret-of-enough-length!")):
        dst = tmp_path / f"out{i}.dcm"
        deidentify_file(str(src), str(dst), DeidConfig(secret))
        outputs.append(dst.read_bytes())
    assert outputs[0] == outputs[1]
    a, c = dcmread(tmp_path / "out0.dcm"), dcmread(tmp_path / "out2.dcm")
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert a[keyword].value != c[keyword].value


def test_secret_never_in_output_logs_or_repr(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    src, dst, secret_file = tmp_path / "in.dcm", tmp_path / "out.dcm", tmp_path / "deid.secret"
    secret_file.write_bytes(SECRET + b"\n")
    secret_file.chmod(0o644)  # readable by others: a warning, which must not quote the secret
    cfg = DeidConfig(load_secret(secret_file))
    synth.dataset(patient_id="PAT-D").save_as(src, enforce_file_format=True)
    deidentify_file(str(src), str(dst), cfg)
    data = dst.read_bytes()
    for form in (SECRET, SECRET.hex().encode(), SECRET.decode().upper().encode()):
        assert form not in data
    assert "secret file" in caplog.text and SECRET.decode() not in caplog.text
    assert SECRET.decode() not in repr(cfg) and SECRET.decode() not in str(cfg)
    with pytest.raises(ValueError) as short:
        DeidConfig(b"short")
    assert "short" not in str(short.value)


# --- the Clean Descriptors rule ----------------------------------------------------------------

def test_descriptors_keep_their_text_and_lose_identifiers() -> None:
    ds = synth.dataset(patient_id="MRN7766554", patient_name="Doe^Jane")
    ds.PatientBirthDate = "19700412"
    ds.InstitutionName = "Saint Elsewhere Hospital"
    ds.StudyDescription = "CT CHEST W/O jane DOE 2023-11-05"
    ds.SeriesDescription = "AX 1.25 Saint Elsewhere Hospital MRN7766554"
    ds.ProtocolName = "Dr. Smith CHEST 12/31/2019 acc 98765432"
    ds.ImageComments = "call 555-867-5309 re DOE^JANE"
    result = deidentify(ds, CFG)
    assert result.original_study_description == "CT CHEST W/O jane DOE 2023-11-05"
    assert ds.StudyDescription == "CT CHEST W/O"
    assert ds.SeriesDescription == "AX 1.25"
    assert ds.ProtocolName == "CHEST acc"
    assert ds.ImageComments == "call re"


@pytest.mark.parametrize("text", ["CT CHEST W/O CONTRAST", "MR BRAIN T1 MPRAGE 1mm 512X512", "DR CHEST PA",
                                  "SAG T2 1024", "Lung 1.25mm B70f", "was detected."])
def test_clean_rule_leaves_ordinary_descriptions_alone(text: str) -> None:
    assert Scrubber(["DOE", "JANE"]).clean(text) == text


def test_dates_shift_at_their_own_precision() -> None:
    assert shift_da("20240301", -1) == "20240229"
    assert shift_da("2024.03.01", -1) == "20240229"  # ACR-NEMA form
    assert shift_da("not a date", -1) == "" and shift_da("20241399", -1) == ""
    assert shift_dt("20240301101500.123+0100", -1) == "20240229101500.123+0100"
    assert shift_dt("202403", -31) == "202401" and shift_dt("2024", -1) == "2023"
    assert shift_dt("garbage", -3) == ""


def test_uid_pseudonyms_are_valid_2_25_uids() -> None:
    for uid in ("1.2.3", "1.2.840.113619.2.30.1.1762295590.1623.978668949.886", "9" * 64):
        new = pseudonym_uid(SECRET, uid)
        assert is_valid_uid(new) and len(new) <= 64 and re.fullmatch(r"2\.25\.[1-9]\d*", new)
        assert new == pseudonym_uid(SECRET, uid) != pseudonym_uid(b"x" * 16, uid)


# --- quarantine ---------------------------------------------------------------------------------

def test_burned_in_annotation_yes_is_quarantined(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
    ds = synth.dataset()
    ds.BurnedInAnnotation = "YES"
    ds.save_as(src, enforce_file_format=True)
    result = deidentify_file(str(src), str(dst), CFG)
    assert result.quarantine and "Burned In Annotation" in result.reason
    assert dst.exists()  # de-identified all the same; the lead routes it


@pytest.mark.parametrize("setup,expected", [
    ({}, False),
    ({"BurnedInAnnotation": "NO"}, False),
    ({"RecognizableVisualFeatures": "YES"}, True),
    ({"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"], "BurnedInAnnotation": "NO"}, True),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "BurnedInAnnotation": "NO"}, True),  # Secondary Capture
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.6.1"}, True),  # ultrasound, no declaration
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.6.1", "BurnedInAnnotation": "NO"}, False),
    ({"Modality": "OT"}, True),
    ({"SeriesDescription": "Dose Report DOE^JOHN"}, True),
])
def test_quarantine_rule(setup: dict[str, object], expected: bool) -> None:
    ds = synth.dataset()
    for keyword, value in setup.items():
        setattr(ds, keyword, value)
    quarantine, reason = assess(ds)
    assert quarantine is expected
    assert bool(reason) is expected and "DOE" not in reason  # reasons quote no value of the instance


def test_secondary_capture_and_ultrasound_samples_are_quarantined(tmp_path: Path) -> None:
    for shared, bundled in (("color/TestPattern_RGB.dcm", "SC_rgb_small_odd.dcm"),
                            ("us/US_RLE_no_pixel_spacing.dcm", "examples_ybr_color.dcm")):
        result = deidentify_file(str(sample(shared, bundled)), str(tmp_path / "out.dcm"), CFG)
        assert result.quarantine, shared


def test_structured_report_is_not_quarantined() -> None:
    ds = dcmread(sample("non-image/SR_comprehensive_fo-dicom.dcm", "test-SR.dcm"))
    assert deidentify(ds, CFG).quarantine is False


# --- file handling --------------------------------------------------------------------------------

def test_elements_after_pixel_data(tmp_path: Path) -> None:
    """Digital signatures, trailing padding and private groups after the pixel data: the file is read
    and written whole; they go, and the pixel data stays byte for byte."""
    ds = synth.dataset(rows=16, columns=16)
    item = Dataset()
    item.DigitalSignatureUID = "1.2.999.55.1"
    ds.add_new(0xFFFAFFFA, "SQ", Sequence([item]))
    ds.add_new(0x7FE10010, "LO", "PHIMARKTRAILCREATOR")
    ds.add_new(0xFFFCFFFC, "OB", b"PHIMARKPADDING")
    src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
    ds.save_as(src, enforce_file_format=True)
    deidentify_file(str(src), str(dst), CFG)
    data = dst.read_bytes()
    assert b"PHIMARK" not in data and b"1.2.999.55.1" not in data
    assert dcmread(dst).PixelData == ds.PixelData


def test_preamble_is_zeroed(tmp_path: Path) -> None:
    ds = synth.dataset()
    ds.preamble = b"II*\0PHIMARKPREAMBLE".ljust(128, b"\0")  # e.g. a DICOM-TIFF dual-personality header
    src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
    ds.save_as(src, enforce_file_format=True)
    deidentify_file(str(src), str(dst), CFG)
    assert dst.read_bytes()[:132] == b"\0" * 128 + b"DICM"


def test_transfer_syntax_unknown_to_pydicom(tmp_path: Path) -> None:
    if not shared_available():
        pytest.skip("needs the shared sample in Deflated Image Frame Compression")
    src = SHARED_SAMPLES / "seg/SEG_liver_DeflatedImageFrame.dcm"
    dst = tmp_path / "out.dcm"
    deidentify_file(str(src), str(dst), CFG)
    before, after = dcmread(src), dcmread(dst)
    assert after.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.8.1"
    assert after.PixelData == before.PixelData and after.PatientID != before.PatientID
    parse_instance(str(dst), 1024)


def test_instance_without_file_meta_in_memory() -> None:
    ds = synth.dataset()
    ds.file_meta = FileMetaDataset()
    del ds.file_meta
    deidentify(ds, CFG)
    assert ds.PatientIdentityRemoved == "YES"


def test_cost_per_instance(tmp_path: Path) -> None:
    """A 0.5 MB CT slice and a tiny instance; the bound is loose (only a gross slowdown fails)."""
    for rows, bound in ((512, 0.25), (8, 0.1)):
        src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
        ds = synth.dataset(rows=rows, columns=rows)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(src, enforce_file_format=True)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            deidentify_file(str(src), str(dst), CFG)
            times.append(time.perf_counter() - start)
        assert statistics.median(times) < bound
