"""Where test DICOM files come from: ``../shared/dicom-samples`` (the team's real files from many
vendors), or, on a clone without it, the files bundled with pydicom. Under CI the shared samples
must be present."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLES = Path(os.environ.get("IMAGING_ARCHIVE_SAMPLES", REPO.parent / "shared" / "dicom-samples"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Sample:
    path: Path
    name: str  # relative to the samples folder
    expected_error: str | None  # substring of the failure message, None: must be stored


# Files the archive refuses, and why (README of dicom-samples; house rules in docs/ingest.md).
EXPECTED_REJECTIONS = {
    "malformed/SC_JLSL_RGB_no_file_meta.dcm": "DICM",
    "malformed/CT_no_file_meta.dcm": "DICM",
    "malformed/CT_no_preamble_no_meta_retired_tags.dcm": "DICM",
    "color/OT_PALETTE_8bit_face.dcm": "DICM",  # no File Meta: not a PS3.10 file
    "malformed/bad_sequence.dcm": "not a valid UID",
    "malformed/EnhancedMR_J2K_too_short.dcm": "truncated",
    "malformed/US_multiframe_65f_JPEG_bad_item_delimiter.dcm": "delimiter",
    "malformed/CT_pixel_data_too_short.dcm": "encapsulated",
    "malformed/CT_big_endian_undefined_length.dcm": "cannot parse",
    "malformed/CT_bad_file_meta.dcm": "File Meta lacks",
    "malformed/MR_truncated_pixel_data.dcm": "truncated",
    # Readable, but not storable in a patient/study/series/instance archive:
    "charset/chrSQEncoding.dcm": "SOPClassUID is missing",
    "charset/chrSQEncoding1.dcm": "SOPClassUID is missing",
    "non-image/private_SOP_class_no_pixels.dcm": "StudyInstanceUID is missing",
    "transfer-syntax/SC_JLSL_16bit_signed.dcm": "StudyInstanceUID is missing",
    "transfer-syntax/SC_RGB_HTJ2K.dcm": "StudyInstanceUID is missing",
    "transfer-syntax/SC_RGB_HTJ2K_lossless.dcm": "StudyInstanceUID is missing",
    "xray/CR_modality_LUT_sequence.dcm": "not a valid UID",  # '999.999.01...' (leading zero)
}


def shared_available() -> bool:
    return (SHARED_SAMPLES / "MANIFEST.tsv").is_file()


def _shared() -> list[Sample]:
    with open(SHARED_SAMPLES / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        names = [row["file"] for row in csv.DictReader(f, delimiter="\t")]
    return [Sample(SHARED_SAMPLES / n, n, EXPECTED_REJECTIONS.get(n)) for n in names]


def _bundled() -> list[Sample]:
    from pydicom.data import get_testdata_file

    names = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "SC_rgb.dcm",
             "MR_small_RLE.dcm", "emri_small.dcm", "693_J2KR.dcm"]
    out = []
    for n in names:
        path = get_testdata_file(n)
        if path:
            out.append(Sample(Path(str(path)), f"pydicom/{n}", None))
    return out


def all_samples() -> list[Sample]:
    """Every sample with what the archive must do with it."""
    if shared_available():
        return _shared()
    if IN_CI:
        raise RuntimeError(f"CI needs the shared DICOM samples at {SHARED_SAMPLES}")
    return _bundled()


def storable() -> list[Sample]:
    return [s for s in all_samples() if s.expected_error is None]


def rejected() -> list[Sample]:
    return [s for s in all_samples() if s.expected_error is not None]
