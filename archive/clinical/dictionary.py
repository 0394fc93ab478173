"""The clinical data dictionary: the MIDRC nodes and properties this archive imports, with their
types and allowed values. One table, read by the importer's validation and rendered into
``docs/clinical.md`` by :func:`markdown` (tests/test_clinical.py checks that the two agree).

Property names and enumerations are MIDRC's (the Gen3 data dictionary of data.midrc.org,
github.com/uc-cdis/midrc_dictionary, ``gdcdictionary/schemas/{case,measurement,imaging_study}.yaml``)
so that a site's MIDRC submission files load as they are. Where this archive stores a property
under another column name (``site_id`` -> ``cases.site``) the field says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Table

from archive.dicom.uids import is_valid_uid
from archive.index.schema import cases, imaging_study_clinical, measurements

SOURCE = "https://github.com/uc-cdis/midrc_dictionary"
# The versions of MIDRC's schemas the enumerations were taken from (commit of each file).
SOURCE_FILES = {
    "case": "gdcdictionary/schemas/case.yaml @ 015137e0e7dc4d2eb18da63f2ad99b13f0c23234",
    # The last version with the link to cases and test_method (later ones link measurements to
    # conditions and procedures only); MIDRC's TSV template still has both columns.
    "measurement": "gdcdictionary/schemas/measurement.yaml @ df8ce456cabd58c74a581f1f00cf82ee1fa30ab0",
    "imaging_study": "gdcdictionary/schemas/imaging_study.yaml @ 01861ebda59013c1492f65f3878e9d244477b2ca",
}

# The longest PatientID (VR LO) and UID (VR UI) a DICOM data set can hold: a longer submitter_id
# could never link to images.
_LO_MAX = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_INTEGER = re.compile(r"[+-]?[0-9]+(\.0*)?")


class Kind(StrEnum):
    """A property's type, named as in the docs."""

    TEXT = "string"
    UID = "DICOM UID"
    ENUM = "enumeration"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    INTEGER_LIST = "list of integers"


@dataclass(frozen=True)
class Field:
    """A property of a node: its MIDRC name, type, constraints and the column that stores it."""

    name: str
    kind: Kind
    description: str
    allowed: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    max_length: int | None = None
    column: str | None = None  # the table column, when not ``name``; "" = checked, not stored
    hint: str = ""  # added to an out-of-range error: what to do instead
    aliases: tuple[str, ...] = ()  # other column names accepted for it

    def raw(self, values: dict[str, Any]) -> object:
        """The value of this field among a record's ``values``, by name or by an alias."""
        for key in (self.name, *self.aliases):
            value = values.get(key)
            if value is not None and value != "":
                return value
        return None

    @property
    def stored_as(self) -> str:
        return self.name if self.column is None else self.column

    def convert(self, value: object) -> object:
        """The stored value of ``value`` (a TSV/CSV cell or a JSON value), None when empty.

        Raises ValueError with the reason a user should read."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, str):
            value = value.strip()  # spreadsheets leave stray spaces around cells
        if self.kind is Kind.INTEGER:
            number = _integer(value)
            if self.minimum is not None and number < self.minimum:
                raise ValueError(f"{number} is below the minimum of {self.minimum}")
            if self.maximum is not None and number > self.maximum:
                raise ValueError(f"{number} is above the maximum of {self.maximum}{self.hint}")
            return number
        if self.kind is Kind.INTEGER_LIST:
            return _integer_list(value)
        if self.kind is Kind.BOOLEAN:
            return _boolean(value)
        text = _text(value)
        if self.kind is Kind.ENUM:
            return _enum(text, self.allowed)
        if _CONTROL.search(text):
            raise ValueError("contains a control character (tab, line break, ...)")
        if self.max_length is not None and len(text) > self.max_length:
            raise ValueError(f"is {len(text)} characters long, more than {self.max_length}")
        if self.kind is Kind.UID and not is_valid_uid(text):
            raise ValueError(f"{text!r} is not a valid DICOM UID (digits and dots, at most 64 characters)")
        return text


def _integer(value: object) -> int:
    # Integral floats are accepted: spreadsheet and pandas exports write "12.0" for 12.
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value.split(".", 1)[0])
    raise ValueError(f"{value!r} is not a whole number")


def _integer_list(value: object) -> list[int]:
    # Gen3 TSVs write arrays as comma-separated values; JSON has a list (or a single number).
    if isinstance(value, list):
        items: list[object] = value
    elif isinstance(value, str):
        inner = value[1:-1] if value.startswith("[") and value.endswith("]") else value
        items = [item.strip() for item in inner.split(",")]
        if any(not item for item in items):
            raise ValueError(f"{value!r} is not a comma-separated list of whole numbers")
    else:
        items = [value]
    try:
        return [_integer(item) for item in items]
    except ValueError:
        raise ValueError(f"{value!r} is not a list of whole numbers") from None


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in ("true", "yes"):
            return True
        if lowered in ("false", "no"):
            return False
    raise ValueError(f"{value!r} is not true or false")


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    # A JSON number is taken as its digits (site or patient ids are often numeric); nothing else.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{value!r} is not a string")


def _enum(text: str, allowed: tuple[str, ...]) -> str:
    if text in allowed:
        return text
    # Capitalisation differs between dictionaries ("Other Pacific Islander"): store MIDRC's.
    for option in allowed:
        if option.lower() == text.lower():
            return option
    raise ValueError(f"{text!r} is not one of: {', '.join(allowed)}")


@dataclass(frozen=True)
class Node:
    """A MIDRC node: its properties (``submitter_id`` first) and the table that stores it."""

    name: str
    table: Table
    description: str
    fields: tuple[Field, ...]
    # True when every record links to a case (``cases.submitter_id``), stored in case_submitter_id.
    links_to_case: bool

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if name == f.name or name in f.aliases), None)


YES_NO = ("Yes", "No")
SEX = ("Female", "Male", "Not Reported")
RACE = ("American Indian or Alaska Native", "Asian", "Black or African American",
        "Native Hawaiian or other Pacific Islander", "Other", "White", "Not Reported")
ETHNICITY = ("Hispanic or Latino", "Not Hispanic or Latino", "Not Reported")
COVID19_POSITIVE = ("Yes", "No", "Indeterminate", "Not Reported")
TEST_NAME = ("COVID-19",)
TEST_METHOD = ("RT-PCR", "Rapid antigen test")
TEST_RESULT = ("Indeterminate", "Negative", "Positive", "Not Reported")

PROJECT_ID = Field("project_id", Kind.TEXT, "The Gen3 project of the record, e.g. `Open-R1`.",
                   max_length=256)

CASE = Node("case", cases, "A patient. Its submitter_id is the PatientID (0010,0020) of its images.", (
    Field("submitter_id", Kind.TEXT, "The case's identifier: the PatientID of its images. Required.",
          max_length=_LO_MAX),
    PROJECT_ID,
    Field("age_at_index", Kind.INTEGER,
          "Age in years at the index event (0 = under one year). Over 89: leave empty and set "
          "age_at_index_gt89 to Yes (HIPAA Safe Harbor).", minimum=0, maximum=89,
          hint="; an age over 89 is a flag: leave age_at_index empty and set age_at_index_gt89 to Yes"),
    Field("age_at_index_gt89", Kind.ENUM, "Whether the age at the index event is over 89 years.",
          allowed=YES_NO),
    Field("sex", Kind.ENUM, "Biological sex.", allowed=SEX),
    Field("race", Kind.ENUM, "Race (OMB categories).", allowed=RACE),
    Field("ethnicity", Kind.ENUM, "Ethnicity (OMB categories).", allowed=ETHNICITY),
    Field("covid19_positive", Kind.ENUM, "Whether the patient has ever had a positive COVID-19 test.",
          allowed=COVID19_POSITIVE),
    Field("index_event", Kind.TEXT, "The event that is day 0 of every time in days of this case.",
          max_length=256),
    Field("icu_indicator", Kind.BOOLEAN, "Whether the patient has been admitted to an ICU."),
    Field("ventilator_indicator", Kind.BOOLEAN, "Whether the patient has been on a ventilator."),
    Field("site_id", Kind.TEXT, "De-identified code of the submitting site (stored as `cases.site`).",
          max_length=256, column="site", aliases=("site",)),
), links_to_case=False)

MEASUREMENT = Node("measurement", measurements, "A COVID-19 test of a case.", (
    Field("submitter_id", Kind.TEXT, "The test's identifier. Required.", max_length=256),
    PROJECT_ID,
    Field("test_name", Kind.ENUM, "What was tested.", allowed=TEST_NAME),
    Field("test_method", Kind.ENUM, "How it was tested.", allowed=TEST_METHOD),
    Field("test_result_text", Kind.ENUM, "The result.", allowed=TEST_RESULT),
    Field("test_days_from_index", Kind.INTEGER,
          "Days from the case's index event to the test (negative: before it)."),
), links_to_case=True)

IMAGING_STUDY = Node(
    "imaging_study", imaging_study_clinical,
    "Clinical data of an imaging study (stored in `imaging_study_clinical`).", (
        Field("submitter_id", Kind.UID, "The study's StudyInstanceUID (0020,000D). Required."),
        PROJECT_ID,
        Field("study_uid", Kind.UID,
              "MIDRC's copy of the StudyInstanceUID: checked to equal submitter_id, not stored.",
              column=""),
        Field("days_to_study", Kind.INTEGER, "Days from the case's index event to the study."),
        Field("days_from_study_to_pos_covid_test", Kind.INTEGER_LIST,
              "Days from the study to each positive COVID-19 test (negative: before the study)."),
        Field("days_from_study_to_neg_covid_test", Kind.INTEGER_LIST,
              "Days from the study to each negative COVID-19 test (negative: before the study)."),
    ), links_to_case=True)

NODES: dict[str, Node] = {node.name: node for node in (CASE, MEASUREMENT, IMAGING_STUDY)}

# The link to a node's case: Gen3 TSV columns (the first one given wins) and JSON keys.
CASE_LINK_COLUMNS = ("cases.submitter_id", "case_ids")
# Gen3's own properties, in every export: not data, ignored without a note.
SYSTEM_COLUMNS = frozenset({"type", "id", "state", "created_datetime", "updated_datetime"})
# The node owning each property that only one node has: such a column in another node's file
# means the file is not what it claims to be.
OWNER: dict[str, str] = {}
for _node in NODES.values():
    for _field in _node.fields:
        if _field.name not in ("submitter_id", "project_id"):
            for _name in (_field.name, *_field.aliases):
                OWNER[_name] = _node.name


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """The data dictionary as Markdown tables, one per node (the generated part of docs/clinical.md)."""
    out: list[str] = []
    for node in NODES.values():
        out.append(f"### `{node.name}`\n")
        out.append(f"{node.description} Source: `{SOURCE_FILES[node.name]}`.\n")
        if node.links_to_case:
            out.append("Links to its case by `cases.submitter_id` (or `case_ids`), required.\n")
        out.append("| field | type | allowed values | description |")
        out.append("| --- | --- | --- | --- |")
        for f in node.fields:
            if f.allowed:
                allowed = ", ".join(f"`{a}`" for a in f.allowed)
            elif f.minimum is not None or f.maximum is not None:
                low, high = ("" if v is None else str(v) for v in (f.minimum, f.maximum))
                allowed = f"{low}–{high}"
            elif f.kind is Kind.BOOLEAN:
                allowed = "`true`, `false` (`Yes`, `No` accepted)"
            elif f.kind is Kind.INTEGER_LIST:
                allowed = "comma-separated in TSV/CSV (`-3,12`), a list in JSON"
            elif f.kind is Kind.UID:
                allowed = "digits and dots, up to 64 characters"
            elif f.kind is Kind.INTEGER:
                allowed = "whole number"
            elif f.max_length:
                allowed = f"up to {f.max_length} characters"
            else:
                allowed = ""
            name = f"`{f.name}`" + "".join(f" (or `{a}`)" for a in f.aliases)
            out.append(f"| {name} | {f.kind.value} | {_cell(allowed)} | {_cell(f.description)} |")
        out.append("")
    return "\n".join(out)

