"""The cohort filter vocabulary: a JSON object in, :class:`CohortFilters` out, every value checked.

DICOM attribute filters become matches (:class:`archive.query.model.Match`) made by
:func:`archive.query.model.make_match`, so they validate and match exactly as the same keys of a
QIDO-RS search do (PS3.4 C.2.2.2: single values, ``*``/``?`` wildcards, date ranges). Clinical
filters take MIDRC's enumerations through the clinical data dictionary
(:mod:`archive.clinical.dictionary`), so a filter accepts what an import stores. A bad filter is
a :class:`FilterError` naming it; a filter given as ``null`` is left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from archive.auth import ALL
from archive.clinical.dictionary import CASE
from archive.query.attributes import BY_KEYWORD, PROCEDURE_CODE, Attribute, Level
from archive.query.model import Match, MatchKind, Query, QueryError, make_match

# Values of a list filter are joined on DICOM's value separator to make one match: it can never
# be part of a value (PS3.5 §6.4), so no value is ever split.
_SEPARATOR = "\\"
_MAX_VALUES = 1000
_MAX_TEXT = 256
_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_DICOM_RANGE = re.compile(r"^(\d{8})?-(\d{8})?$")  # PS3.4 C.2.2.2.5 range matching
# Ages are in years, 0-89 as MIDRC stores them; 90 stands for every age over 89, which is only
# a flag (age_at_index_gt89 = Yes, HIPAA Safe Harbor), never a number.
AGE_OVER_89 = 90


class FilterError(ValueError):
    """A filter that cannot be applied; ``field`` is its name in the filter object."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True)
class Range:
    """Inclusive whole-number bounds; None: open on that side."""

    min: int | None = None
    max: int | None = None

    def to_json(self) -> dict[str, int]:
        out = {}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        return out


# The DICOM attribute of each DICOM filter: matched by the query model at study level, lower
# levels (a series' Modality, BodyPartExamined, Manufacturer) by "some series of the study".
DICOM_FILTERS: dict[str, Attribute] = {
    "modality": BY_KEYWORD["ModalitiesInStudy"],
    "body_part": BY_KEYWORD["BodyPartExamined"],
    "manufacturer": BY_KEYWORD["Manufacturer"],
    "institution": BY_KEYWORD["InstitutionName"],
    "study_description": BY_KEYWORD["StudyDescription"],
    "loinc_code": PROCEDURE_CODE,
    "study_date": BY_KEYWORD["StudyDate"],
}
# MIDRC case fields matched on their stored values.
ENUM_FILTERS = ("covid19_positive", "sex", "race", "ethnicity")
BOOLEAN_FILTERS = ("icu_indicator", "ventilator_indicator")
# Range filters: (lowest, highest) allowed bound.
RANGE_FILTERS: dict[str, tuple[int, int]] = {
    "age": (0, AGE_OVER_89),
    "images": (0, 2**31 - 1),
    "series": (0, 2**31 - 1),
}
# Every filter name, in the order of the docs and of the normalized filter object.
NAMES: tuple[str, ...] = (*DICOM_FILTERS, "body_region", *ENUM_FILTERS, "age", *BOOLEAN_FILTERS,
                          "images", "series")
CLINICAL = frozenset({*ENUM_FILTERS, "age", *BOOLEAN_FILTERS})


@dataclass(frozen=True)
class CohortFilters:
    """Parsed filters. ``dicom`` is a conjunction of groups, each a disjunction of matches (a
    list filter whose values are all plain is one LIST match; wildcard values need a group)."""

    dicom: tuple[tuple[Match, ...], ...] = ()
    body_region: tuple[str, ...] = ()
    enums: dict[str, tuple[str, ...]] = field(default_factory=dict)  # covid19_positive, sex, ...
    age: Range | None = None
    booleans: dict[str, bool] = field(default_factory=dict)  # icu_indicator, ventilator_indicator
    images: Range | None = None
    series: Range | None = None
    normalized: dict[str, Any] = field(default_factory=dict)  # the canonical filter object

    @property
    def clinical(self) -> bool:
        """True when a clinical filter is given: only studies of patients with a case match."""
        return bool(self.enums or self.booleans or self.age is not None)

    def study_query(self) -> Query:
        """The DICOM matches that are plain conjunctions, as the study-level query QIDO-RS
        would build for them (the wildcard groups are in :attr:`dicom` only). Release states
        are applied once, by query.cohort_select, for the caller."""
        return Query(Level.STUDY, [g[0] for g in self.dicom if len(g) == 1], visible=ALL)

    def to_json(self) -> dict[str, Any]:
        return dict(self.normalized)


def _text_values(name: str, value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise FilterError(name, "give at least one value, or leave the filter out")
    if len(values) > _MAX_VALUES:
        raise FilterError(name, f"at most {_MAX_VALUES} values")
    out: list[str] = []
    for v in values:
        if not isinstance(v, str):
            raise FilterError(name, f"{v!r} is not a string (give a string or a list of strings)")
        v = v.strip()
        if not v:
            raise FilterError(name, "an empty value matches nothing; leave the filter out instead")
        if len(v) > _MAX_TEXT:
            raise FilterError(name, f"a value is longer than {_MAX_TEXT} characters")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape
            raise FilterError(name, "a value is not valid Unicode text") from None
        if _SEPARATOR in v:
            raise FilterError(name, f"{v[:70]!r}: a backslash cannot be part of a DICOM value")
        if v not in out:
            out.append(v)
    return out


def _dicom_group(name: str, attr: Attribute, value: Any) -> tuple[tuple[Match, ...], list[str]]:
    values = _text_values(name, value)
    matches = []
    for v in values:
        try:
            m = make_match(attr, v, _SEPARATOR)
        except QueryError as exc:
            raise FilterError(name, str(exc)) from None
        if m.kind is MatchKind.UNIVERSAL:
            raise FilterError(name, f"{v!r} matches everything; leave the filter out instead")
        matches.append(m)
    if len(matches) > 1 and all(m.kind is MatchKind.SINGLE for m in matches):
        # Plain values: one IN list (C.2.2.2.2 list matching), not one condition per value.
        return (Match(attr, MatchKind.LIST, tuple(values)),), values
    return tuple(matches), values


def _date(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise FilterError(name, f"{value!r} is not a date (YYYYMMDD or YYYY-MM-DD)")
    iso = _ISO_DATE.match(value.strip())
    text = "".join(iso.groups()) if iso else value.strip()
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        if len(text) != 8 or not text.isdigit():
            raise ValueError
    except ValueError:
        raise FilterError(name, f"{value!r} is not a date (YYYYMMDD or YYYY-MM-DD)") from None
    return text


def _study_date(value: Any) -> tuple[Match, dict[str, str]]:
    """A StudyDate range: a DICOM range string (``20200101-20201231``, ``20200101-``), one date,
    or ``{"from": ..., "to": ...}`` with either bound."""
    name = "study_date"
    if isinstance(value, str):
        text = value.strip()
        dicom = _DICOM_RANGE.match(text)
        if _ISO_DATE.match(text) or (len(text) == 8 and text.isdigit()):
            bounds = {"from": text, "to": text}
        elif dicom:
            bounds = {"from": dicom.group(1), "to": dicom.group(2)}
        else:
            raise FilterError(name, f"{text[:40]!r}: give YYYYMMDD, a DICOM range (YYYYMMDD-YYYYMMDD, "
                                    'YYYYMMDD-, -YYYYMMDD) or {"from": ..., "to": ...}')
    elif isinstance(value, dict):
        unknown = set(value) - {"from", "to"}
        if unknown:
            raise FilterError(name, f"unknown key {sorted(unknown)[0]!r}: give from and/or to")
        bounds = {k: v for k, v in value.items() if v not in (None, "")}
    else:
        raise FilterError(name, 'give "YYYYMMDD-YYYYMMDD" or {"from": "YYYYMMDD", "to": "YYYYMMDD"}')
    checked = {k: _date(f"{name}.{k}", v) for k, v in bounds.items() if v}
    if not checked:
        raise FilterError(name, "a date range needs at least one bound")
    if "from" in checked and "to" in checked and checked["from"] > checked["to"]:
        raise FilterError(name, f"from {checked['from']} is after to {checked['to']}")
    raw = f"{checked.get('from', '')}-{checked.get('to', '')}"
    try:
        return make_match(DICOM_FILTERS[name], raw, _SEPARATOR), checked
    except QueryError as exc:
        raise FilterError(name, str(exc)) from None


def _enum(name: str, value: Any) -> tuple[str, ...]:
    spec = CASE.field(name)
    assert spec is not None, name
    if name == "covid19_positive" and isinstance(value, bool):
        value = "Yes" if value else "No"  # "COVID-19 positive / negative"
    values = value if isinstance(value, list) else [value]
    if not values:
        raise FilterError(name, "give at least one value, or leave the filter out")
    out: list[str] = []
    for v in values:
        if name == "covid19_positive" and isinstance(v, bool):
            v = "Yes" if v else "No"
        if not isinstance(v, str) or not v.strip():
            raise FilterError(name, f"{v!r} is not one of: {', '.join(spec.allowed)}")
        try:
            canonical = spec.convert(v)
        except ValueError as exc:
            raise FilterError(name, str(exc)) from None
        if canonical not in out:
            out.append(str(canonical))
    return tuple(out)


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    spec = CASE.field(name)
    assert spec is not None, name
    if isinstance(value, str) and value.strip():
        try:
            return bool(spec.convert(value))  # "true", "Yes", ... as an import accepts them
        except ValueError as exc:
            raise FilterError(name, str(exc)) from None
    raise FilterError(name, f"{value!r} is not true or false")


def _range(name: str, value: Any) -> Range:
    lowest, highest = RANGE_FILTERS[name]
    if not isinstance(value, dict):
        raise FilterError(name, 'give {"min": N, "max": N} (either bound may be left out)')
    unknown = set(value) - {"min", "max"}
    if unknown:
        raise FilterError(name, f"unknown key {sorted(unknown)[0]!r}: give min and/or max")
    bounds: dict[str, int] = {}
    for key in ("min", "max"):
        v = value.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise FilterError(f"{name}.{key}", f"{v!r} is not a whole number")
        if not lowest <= v <= highest:
            hint = " (90 stands for every age over 89, which MIDRC records only as a flag)" \
                if name == "age" else ""
            raise FilterError(f"{name}.{key}", f"{v} is not between {lowest} and {highest}{hint}")
        bounds[key] = v
    if not bounds:
        raise FilterError(name, "a range needs min, max or both")
    if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
        raise FilterError(name, f"min {bounds['min']} is above max {bounds['max']}")
    return Range(bounds.get("min"), bounds.get("max"))


def parse_filters(obj: Any) -> CohortFilters:
    """Check and convert a filter object (docs/cohorts.md); raises :class:`FilterError`."""
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise FilterError("filters", "must be a JSON object of filter names to values")
    for name in obj:
        if name not in NAMES:
            raise FilterError(str(name)[:80], f"unknown filter; the filters are {', '.join(NAMES)}")
    dicom: list[tuple[Match, ...]] = []
    enums: dict[str, tuple[str, ...]] = {}
    booleans: dict[str, bool] = {}
    ranges: dict[str, Range] = {}
    body_region: tuple[str, ...] = ()
    normalized: dict[str, Any] = {}
    for name in NAMES:  # in vocabulary order: the normalized object does not depend on the input's
        value = obj.get(name)
        if value is None:
            continue
        if name == "study_date":
            match, bounds = _study_date(value)
            dicom.append((match,))
            normalized[name] = bounds
        elif name in DICOM_FILTERS:
            group, values = _dicom_group(name, DICOM_FILTERS[name], value)
            dicom.append(group)
            normalized[name] = values
        elif name == "body_region":
            body_region = tuple(_text_values(name, value))
            normalized[name] = list(body_region)
        elif name in ENUM_FILTERS:
            enums[name] = _enum(name, value)
            normalized[name] = list(enums[name])
        elif name in BOOLEAN_FILTERS:
            booleans[name] = _boolean(name, value)
            normalized[name] = booleans[name]
        else:
            ranges[name] = _range(name, value)
            normalized[name] = ranges[name].to_json()
    return CohortFilters(tuple(dicom), body_region, enums, ranges.get("age"), booleans,
                         ranges.get("images"), ranges.get("series"), normalized)
