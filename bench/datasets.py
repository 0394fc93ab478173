"""Synthetic DICOM data for the benchmark, cached on disk and reused between runs.

Two sets:

* CT: 512x512 16-bit slices with a realistic CT header, written with pydicom (Explicit VR Little
  Endian): ``studies x series x slices`` plus one long series (the /metadata and retrieve figures).
  A ``tag`` gives another CT set with UIDs and patients of its own (C-STORE and C-MOVE sets).
* tiny: N instances of 8x8 pixels spread over many patients, studies and series, with varied names,
  dates, modalities and descriptions, for the index-scale (QIDO) figures. Built with ``encoder.py``
  and stored as one file of length-prefixed Part 10 records.

Each set comes with a catalog (``StudyRecord`` list) from which the QIDO step derives the answers
it expects. Every UID is ``2.25.<uuid5>``, deterministic for a given size and seed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import struct
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path

import encoder
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

CACHE_VERSION = "v1"
CT_SIZE = 512
TINY_SIZE = 8
_UID_NAMESPACE = uuid.UUID("9a0e3c1e-4d0b-4a57-9d7e-6c1f2b0f5a11")

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
}
DESCRIPTIONS = {
    "CT": ["CT CHEST W/O CONTRAST", "CT CHEST W CONTRAST", "CT ABDOMEN PELVIS W CONTRAST",
           "CT HEAD W/O CONTRAST", "CT ANGIO CHEST PE PROTOCOL", "CT LUMBAR SPINE W/O CONTRAST"],
    "MR": ["MR BRAIN W/O CONTRAST", "MR BRAIN W AND W/O CONTRAST", "MR KNEE LEFT W/O CONTRAST",
           "MR LUMBAR SPINE W/O CONTRAST", "MR PROSTATE MULTIPARAMETRIC"],
    "CR": ["XR CHEST PA AND LATERAL", "XR CHEST AP PORTABLE", "XR HAND 3 VIEWS LEFT",
           "XR KNEE 2 VIEWS RIGHT", "XR ABDOMEN 1 VIEW"],
    "DX": ["XR CHEST PA AND LATERAL", "XR CHEST 1 VIEW", "XR FOOT 3 VIEWS RIGHT",
           "XR PELVIS 1 VIEW", "XR SHOULDER 2 VIEWS LEFT"],
    "US": ["US ABDOMEN COMPLETE", "US PELVIS TRANSVAGINAL", "US THYROID", "US RENAL BILATERAL",
           "US OB 2ND TRIMESTER"],
}
FAMILY_NAMES = [
    "DOE", "SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS", "RODRIGUEZ",
    "MARTINEZ", "HERNANDEZ", "LOPEZ", "GONZALEZ", "WILSON", "ANDERSON", "TAYLOR", "MOORE", "PATEL",
    "JACKSON", "MARTIN", "LEE", "PEREZ", "THOMPSON", "WHITE", "HARRIS", "SANCHEZ", "CLARK", "RAMIREZ",
    "LEWIS", "ROBINSON", "WALKER", "YOUNG", "ALLEN", "KING", "WRIGHT", "SCOTT", "TORRES", "NGUYEN",
    "HILL", "FLORES", "GREEN", "ADAMS", "NELSON", "BAKER", "HALL", "RIVERA", "CAMPBELL", "MITCHELL",
    "CARTER", "DOERR", "DOEBLER",
]
GIVEN_NAMES = [
    "JOHN", "JANE", "MARY", "JAMES", "ROBERT", "PATRICIA", "MICHAEL", "LINDA", "WILLIAM", "ELIZABETH",
    "DAVID", "BARBARA", "RICHARD", "SUSAN", "JOSEPH", "JESSICA", "THOMAS", "SARAH", "CHARLES", "KAREN",
]


def make_uid(*parts: object) -> str:
    """A deterministic ``2.25`` UID (PS3.5 B.2) from a name."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(map(str, parts))).int}"


@dataclass
class SeriesRecord:
    uid: str
    modality: str
    instances: int


@dataclass
class StudyRecord:
    uid: str
    patient_id: str
    patient_name: str
    date: str
    description: str
    series: list[SeriesRecord] = field(default_factory=list)

    @property
    def modalities(self) -> set[str]:
        return {s.modality for s in self.series}

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.series)


def _study_from_dict(d: dict) -> StudyRecord:
    series = [SeriesRecord(**s) for s in d.pop("series")]
    return StudyRecord(**d, series=series)


def _write_json(path: Path, payload: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- CT


@dataclass
class CtSet:
    """CT files in ingest order, their catalog, and the long series used for metadata/retrieve."""

    files: list[Path]
    total_bytes: int
    studies: list[StudyRecord]
    big_study_uid: str
    big_series_uid: str
    big_count: int
    big_bytes: int


def _ct_template() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.Manufacturer = "BENCH MEDICAL"
    ds.ManufacturerModelName = "SYNTH CT 64"
    ds.InstitutionName = "BENCH GENERAL HOSPITAL"
    ds.ReferringPhysicianName = "REFERRER^ROSA"
    ds.BodyPartExamined = "CHEST"
    ds.PatientBirthDate = "19600412"
    ds.PatientSex = "F"
    ds.PatientAge = "064Y"
    ds.KVP = "120"
    ds.SliceThickness = "1.0"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.XRayTubeCurrent = 250
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.703125, 0.703125]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = CT_SIZE
    ds.Columns = CT_SIZE
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    return ds


def _phantom() -> np.ndarray:
    """A body-shaped ellipse of water with two lungs and a spine, stored values (HU + 1024)."""
    y, x = np.mgrid[0:CT_SIZE, 0:CT_SIZE].astype(np.float32)
    cx, cy = CT_SIZE / 2, CT_SIZE / 2
    img = np.zeros((CT_SIZE, CT_SIZE), np.uint16)
    img[((x - cx) / 230) ** 2 + ((y - cy) / 170) ** 2 <= 1] = 1040
    for lx in (cx - 95, cx + 95):
        img[((x - lx) / 70) ** 2 + ((y - cy + 10) / 110) ** 2 <= 1] = 200
    img[((x - cx) / 25) ** 2 + ((y - cy - 120) / 25) ** 2 <= 1] = 2200
    return img


def _ct_slice(ds: Dataset, base: np.ndarray, rng: np.random.Generator, index: int, sop_uid: str) -> bytes:
    noise = rng.integers(0, 60, size=base.shape, dtype=np.uint16)
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.InstanceNumber = index + 1
    ds.SliceLocation = f"{-index * 1.0:.1f}"
    ds.ImagePositionPatient = [-180.0, -180.0, -index * 1.0]
    ds.PixelData = (base + noise).tobytes()
    ds["PixelData"].VR = "OW"
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _set_ct_study(ds: Dataset, study: StudyRecord, number: int) -> None:
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.StudyInstanceUID = study.uid
    ds.StudyDate = study.date
    ds.SeriesDate = study.date
    ds.ContentDate = study.date
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"CTACC{number:05d}"
    ds.StudyID = str(number)
    ds.StudyDescription = study.description
    ds.FrameOfReferenceUID = make_uid("ct-for", study.uid)


def _plan_ct(studies: int, series: int, slices: int, big: int, tag: str = "") -> list[StudyRecord]:
    """The CT catalog; ``tag`` (e.g. "cstore1") gives a set with its own UIDs and patients, so it is
    not a duplicate of the untagged STOW-RS set. No tag: the UIDs the STOW-RS set always had."""
    uid = (lambda *parts: make_uid(tag, *parts)) if tag else make_uid
    pid, name = (f"CTB-{tag.upper()}-", f"CTBENCH^{tag.upper()}-") if tag else ("CTB", "CTBENCH^")
    plan: list[StudyRecord] = []
    for i in range(studies):
        rec = StudyRecord(uid("ct-study", i), f"{pid}{i:05d}", f"{name}PATIENT{i}",
                          f"1999{i % 12 + 1:02d}15", "CT CHEST ABDOMEN PELVIS W CONTRAST")
        rec.series = [SeriesRecord(uid("ct-series", i, j), "CT", slices) for j in range(series)]
        plan.append(rec)
    big_rec = StudyRecord(uid("ct-big-study", big), f"{pid}BIG00001" if tag else "CTBIG00001",
                          f"{name}BIGSERIES", "19981120", "CT CHEST HIGH RESOLUTION")
    big_rec.series = [SeriesRecord(uid("ct-big-series", big), "CT", big)]
    plan.append(big_rec)
    return plan


def _write_ct_files(folder: Path, plan: list[StudyRecord]) -> list[Path]:
    ds = _ct_template()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    base, rng = _phantom(), np.random.default_rng(1234)
    files: list[Path] = []
    for number, study in enumerate(plan, start=1):
        _set_ct_study(ds, study, number)
        for sn, series in enumerate(study.series, start=1):
            ds.SeriesInstanceUID = series.uid
            ds.SeriesNumber = sn
            ds.SeriesDescription = f"AXIAL 1.0 {sn}"
            for k in range(series.instances):
                path = folder / f"{len(files):06d}.dcm"
                path.write_bytes(_ct_slice(ds, base, rng, k, make_uid("ct-sop", series.uid, k)))
                files.append(path)
    return files


def ct_set(cache: Path, studies: int, series: int, slices: int, big: int, tag: str = "") -> CtSet:
    """The CT set, generated into ``cache`` unless a complete copy is already there. ``tag`` names a
    set with UIDs of its own (see ``_plan_ct``); ``studies`` may be 0 (only the long series)."""
    label = f"-{tag}" if tag else ""
    folder = cache / f"ct-{CACHE_VERSION}{label}-{studies}x{series}x{slices}-big{big}"
    manifest = folder / "manifest.json"
    plan = _plan_ct(studies, series, slices, big, tag)
    if not manifest.exists():
        folder.mkdir(parents=True, exist_ok=True)
        print(f"  generating CT set into {folder} ...", flush=True)
        names = [p.name for p in _write_ct_files(folder, plan)]
        _write_json(manifest, {"files": names})
    files = [folder / name for name in json.loads(manifest.read_text())["files"]]
    sizes = [p.stat().st_size for p in files]
    big_rec = plan[-1]
    return CtSet(files, sum(sizes), plan, big_rec.uid, big_rec.series[0].uid, big, sum(sizes[-big:]))


# -------------------------------------------------------------------------------------------- tiny


@dataclass
class TinySet:
    """Tiny instances stored as length-prefixed Part 10 records in one file."""

    path: Path
    count: int
    total_bytes: int
    studies: list[StudyRecord]

    def records(self) -> Iterator[bytes]:
        with self.path.open("rb") as fh:
            for _ in range(self.count):
                (length,) = struct.unpack("<L", fh.read(4))
                yield fh.read(length)

    def batches(self, size: int) -> Iterator[list[bytes]]:
        batch: list[bytes] = []
        for record in self.records():
            batch.append(record)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch


def _random_date(rng: random.Random, first: dt.date, last: dt.date) -> str:
    return (first + dt.timedelta(days=rng.randint(0, (last - first).days))).strftime("%Y%m%d")


def _plan_tiny(count: int, seed: int, pid_prefix: str = "PID") -> list[StudyRecord]:
    rng = random.Random(seed)
    patients = [(f"{pid_prefix}{p:07d}", f"{rng.choice(FAMILY_NAMES)}^{rng.choice(GIVEN_NAMES)}")
                for p in range(max(10, count // 50))]
    studies: list[StudyRecord] = []
    remaining = count
    for s in range(count):  # bounded: every study takes at least one instance
        if remaining <= 0:
            break
        pid, name = rng.choice(patients)
        modality = rng.choice(list(SOP_CLASSES))
        study = StudyRecord(make_uid("tiny-study", count, seed, s), pid, name,
                            _random_date(rng, dt.date(2005, 1, 1), dt.date(2024, 12, 31)),
                            rng.choice(DESCRIPTIONS[modality]))
        for k in range(rng.randint(1, 4)):
            n = min(remaining, rng.randint(1, 15))
            if n > 0:
                study.series.append(SeriesRecord(make_uid("tiny-series", study.uid, k), modality, n))
                remaining -= n
        studies.append(study)
    return studies


def _tiny_pixels() -> bytes:
    return np.arange(TINY_SIZE * TINY_SIZE, dtype=np.uint16).tobytes()


def _tiny_instance(study: StudyRecord, number: int, sn: int, series: SeriesRecord, k: int,
                   pixels: bytes) -> bytes:
    sop_class = SOP_CLASSES[series.modality]
    sop_uid = make_uid("tiny-sop", series.uid, k)
    elements: list[encoder.Element] = [
        (0x00080005, "CS", "ISO_IR 100"), (0x00080008, "CS", "ORIGINAL\\PRIMARY"),
        (0x00080016, "UI", sop_class), (0x00080018, "UI", sop_uid),
        (0x00080020, "DA", study.date), (0x00080021, "DA", study.date), (0x00080030, "TM", "093000"),
        (0x00080050, "SH", f"ACC{number:08d}"), (0x00080060, "CS", series.modality),
        (0x00080070, "LO", "BENCH MEDICAL"), (0x00080090, "PN", "REFERRER^ROSA"),
        (0x00081030, "LO", study.description), (0x0008103E, "LO", f"{series.modality} SERIES {sn}"),
        (0x00100010, "PN", study.patient_name), (0x00100020, "LO", study.patient_id),
        (0x00100030, "DA", "19700101"), (0x00100040, "CS", "O"),
        (0x0020000D, "UI", study.uid), (0x0020000E, "UI", series.uid),
        (0x00200010, "SH", str(number % 10**8)), (0x00200011, "IS", str(sn)), (0x00200013, "IS", str(k + 1)),
        (0x00280002, "US", 1), (0x00280004, "CS", "MONOCHROME2"),
        (0x00280010, "US", TINY_SIZE), (0x00280011, "US", TINY_SIZE),
        (0x00280100, "US", 16), (0x00280101, "US", 16), (0x00280102, "US", 15), (0x00280103, "US", 0),
        (0x7FE00010, "OW", pixels),
    ]
    return encoder.part10(sop_class, sop_uid, elements)


def _tiny_stream(studies: list[StudyRecord]) -> Iterator[bytes]:
    pixels = _tiny_pixels()
    for number, study in enumerate(studies, start=1):
        for sn, series in enumerate(study.series, start=1):
            for k in range(series.instances):
                yield _tiny_instance(study, number, sn, series, k, pixels)


def _check_tiny(data: bytes, study: StudyRecord) -> None:
    """Read one generated instance back with pydicom; raise if it does not say what was meant."""
    ds = pydicom.dcmread(BytesIO(data))
    got = (str(ds.PatientName), ds.PatientID, ds.StudyInstanceUID, ds.StudyDescription, ds.StudyDate)
    want = (study.patient_name, study.patient_id, study.uid, study.description, study.date)
    if got != want or ds.pixel_array.shape != (TINY_SIZE, TINY_SIZE):
        raise RuntimeError(f"tiny instance encoder produced {got}, expected {want}")


def _write_tiny(path: Path, studies: list[StudyRecord]) -> int:
    total = 0
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        for i, data in enumerate(_tiny_stream(studies)):
            if i == 0:
                _check_tiny(data, studies[0])
            fh.write(struct.pack("<L", len(data)))
            fh.write(data)
            total += len(data)
    os.replace(tmp, path)
    return total


def tiny_set(cache: Path, count: int, seed: int = 7, pid_prefix: str = "PID") -> TinySet:
    """The tiny set of ``count`` instances, generated into ``cache`` unless already there. Another
    ``seed`` gives other study/series UIDs; another ``pid_prefix`` other patient IDs too (a second set
    stored beside the first then shares no patient with it)."""
    cache.mkdir(parents=True, exist_ok=True)
    label = "" if pid_prefix == "PID" else f"-{pid_prefix}"
    stem = cache / f"tiny-{CACHE_VERSION}{label}-{count}-s{seed}"
    blob, catalog = stem.with_suffix(".bin"), stem.with_suffix(".json")
    if not catalog.exists() or not blob.exists():
        print(f"  generating {count:,} tiny instances into {blob} ...", flush=True)
        studies = _plan_tiny(count, seed, pid_prefix)
        total = _write_tiny(blob, studies)
        _write_json(catalog, {"total_bytes": total, "studies": [asdict(s) for s in studies]})
    meta = json.loads(catalog.read_text())
    studies = [_study_from_dict(d) for d in meta["studies"]]
    return TinySet(blob, count, meta["total_bytes"], studies)
