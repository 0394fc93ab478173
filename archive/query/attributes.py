"""The attributes the index holds, per level: the one table that ingest fills and queries match.

Each entry names the DICOM attribute, its VR, the level (patient, study, series, instance) and the
index column. Attributes outside this table can still be returned (from the stored DICOM JSON) but
not matched.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword


class Level(IntEnum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    INSTANCE = 3


@dataclass(frozen=True)
class Attribute:
    keyword: str
    tag: int
    vr: str
    level: Level
    column: str
    computed: bool = False  # derived by the index (counts, modalities), not read from the file

    @property
    def tag_hex(self) -> str:
        return f"{self.tag:08X}"


def _attr(keyword: str, level: Level, column: str, computed: bool = False) -> Attribute:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return Attribute(keyword, tag, dictionary_VR(tag), level, column, computed)


P, ST, SE, IN = Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE

ATTRIBUTES: tuple[Attribute, ...] = (
    _attr("PatientName", P, "patient_name"),
    _attr("PatientID", P, "patient_id"),
    _attr("IssuerOfPatientID", P, "issuer_of_patient_id"),
    _attr("PatientBirthDate", P, "birth_date"),
    _attr("PatientSex", P, "sex"),
    _attr("StudyInstanceUID", ST, "study_uid"),
    _attr("StudyDate", ST, "study_date"),
    _attr("StudyTime", ST, "study_time"),
    _attr("AccessionNumber", ST, "accession_number"),
    _attr("StudyID", ST, "study_id"),
    _attr("ReferringPhysicianName", ST, "referring_physician_name"),
    _attr("StudyDescription", ST, "study_description"),
    _attr("PatientAge", ST, "patient_age"),
    _attr("ModalitiesInStudy", ST, "modalities", computed=True),
    _attr("NumberOfStudyRelatedSeries", ST, "num_series", computed=True),
    _attr("NumberOfStudyRelatedInstances", ST, "num_instances", computed=True),
    _attr("SeriesInstanceUID", SE, "series_uid"),
    _attr("Modality", SE, "modality"),
    _attr("SeriesNumber", SE, "series_number"),
    _attr("SeriesDescription", SE, "series_description"),
    _attr("SeriesDate", SE, "series_date"),
    _attr("SeriesTime", SE, "series_time"),
    _attr("BodyPartExamined", SE, "body_part_examined"),
    _attr("Manufacturer", SE, "manufacturer"),
    _attr("InstitutionName", SE, "institution_name"),
    _attr("PerformedProcedureStepStartDate", SE, "pps_start_date"),
    _attr("PerformedProcedureStepStartTime", SE, "pps_start_time"),
    _attr("NumberOfSeriesRelatedInstances", SE, "num_instances", computed=True),
    _attr("SOPInstanceUID", IN, "sop_uid"),
    _attr("SOPClassUID", IN, "sop_class_uid"),
    _attr("InstanceNumber", IN, "instance_number"),
    _attr("Rows", IN, "rows"),
    _attr("Columns", IN, "columns"),
    _attr("BitsAllocated", IN, "bits_allocated"),
    _attr("NumberOfFrames", IN, "number_of_frames"),
    _attr("ContentDate", IN, "content_date"),
    _attr("ContentTime", IN, "content_time"),
)

# The harmonized procedure code of a study (archive.harmonize), matched as the CodeValue of an
# item of ProcedureCodeSequence (0008,1032); returned as that sequence (query.results).
PROCEDURE_CODE = Attribute("ProcedureCodeSequence", 0x00081032, "SH", ST, "loinc_code", computed=True)
# Nested keys (PS3.18 §8.3.4.1 "sequence.attribute") that can be matched.
NESTED: dict[str, Attribute] = {"00081032.00080100": PROCEDURE_CODE,
                                "ProcedureCodeSequence.CodeValue": PROCEDURE_CODE}

BY_TAG: dict[int, Attribute] = {a.tag: a for a in ATTRIBUTES}
BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in ATTRIBUTES}

# Attributes every QIDO-RS response carries per level (PS3.18 Tables 10.6.3-3, -4, -5).
DEFAULT_RETURN: dict[Level, tuple[str, ...]] = {
    Level.STUDY: ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
                  "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
                  "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
                  "NumberOfStudyRelatedInstances", "StudyDescription"),
    Level.SERIES: ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                   "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
                   "PerformedProcedureStepStartTime", "BodyPartExamined"),
    Level.INSTANCE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
                     "BitsAllocated", "NumberOfFrames"),
}

# Integer-valued columns (IS/US) are stored as integers so that ordering and matching are numeric.
INTEGER_VRS = frozenset({"IS", "US", "UL", "SS", "SL"})


def resolve(key: str) -> int | None:
    """Tag for a keyword (``PatientID``) or 8-hex-digit tag (``00100020``); None if neither."""
    if len(key) == 8:
        try:
            return int(key, 16)
        except ValueError:
            pass
    tag = tag_for_keyword(key)
    return tag


def keyword(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"
