"""QIDO-RS matching (PS3.18 §10.6, PS3.4 C.2.2.2) against the real app: STOW-RS a small synthetic
population, then search it over HTTP and compare with result sets computed from the population."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from archive.app import create_app
from archive.auth import ALL
from archive.keys import ENGINE
from archive.query.cfind import STUDY_ROOT, parse_identifier, to_identifier
from archive.query.run import search as run_search
from tests.conftest import make_config, multipart

# Searches do not change the archive: one stored population (one event loop) serves the module.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.databases]

# ---------------------------------------------------------------------------------------------
# The population
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patient:
    name: str
    pid: str


@dataclass(frozen=True)
class Study:
    key: str
    uid: str
    patient: Patient
    date: str
    time: str
    description: str
    accession: str
    referrer: str


@dataclass(frozen=True)
class Series:
    uid: str
    study: Study
    modality: str
    number: int
    manufacturer: str


@dataclass(frozen=True)
class Instance:
    uid: str
    series: Series
    number: int
    slice_thickness: float
    model: str


DOE_JOHN = Patient("Doe^John", "PID001")
DOE_JANE = Patient("Doe^Jane", "PID002")
SMITH = Patient("Smith^Anna", "PID003")
MUELLER = Patient("Müller^Hans", "PID004")

# key, patient, date, time, description, accession, referrer, [(modality, instances), ...]
_SPEC: list[tuple[str, Patient, str, str, str, str, str, list[tuple[str, int]]]] = [
    ("S1", DOE_JOHN, "20200115", "083000", "CHEST PA AND LATERAL", "ACC001", "", [("CR", 2), ("CR", 1)]),
    ("S2", DOE_JOHN, "20201231", "235959", "CT HEAD W/O CONTRAST", "ACC002", "House^Gregory",
     [("CT", 3)]),
    ("S3", DOE_JANE, "20191231", "120000", "MR BRAIN", "acc002", "", [("MR", 2), ("CT", 1)]),
    ("S4", DOE_JANE, "20210101", "000000", "50% CONTRAST", "ACC_05", "", [("CT", 1)]),
    ("S5", SMITH, "20200601", "143000", "500 CONTRAST", "ACCX05", "", [("MR", 1)]),
    ("S6", MUELLER, "20200101", "101010", "chest pa", "ACC%06", "", [("CR", 1)]),
    ("S7", SMITH, "", "", "", "", "", [("MR", 1)]),  # no date, time, description or accession
]

# A ProcedureCodeSequence item the sender put in a study's files (served after the harmonized one).
SITE_CODE = ("CTHEADWO", "99SITE", "CT head without contrast")
_SITE_CODES = {"S2": SITE_CODE}

_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage, "CR": ComputedRadiographyImageStorage}
_MANUFACTURER = {"CT": "ACME CT", "MR": "ACME MR", "CR": "Other Corp"}


def _build_population() -> tuple[list[Study], list[Series], list[Instance]]:
    studies: list[Study] = []
    series: list[Series] = []
    insts: list[Instance] = []
    for key, patient, date, time, desc, acc, ref, series_spec in _SPEC:
        study = Study(key, generate_uid(), patient, date, time, desc, acc, ref)
        studies.append(study)
        for number, (modality, count) in enumerate(series_spec, start=1):
            se = Series(generate_uid(), study, modality, number, _MANUFACTURER[modality])
            series.append(se)
            for i in range(1, count + 1):
                insts.append(Instance(generate_uid(), se, i, 0.5 * len(insts) + 1.0,
                                      f"Model-{len(insts)}"))
    return studies, series, insts


STUDIES, SERIES, INSTANCES = _build_population()
STUDY = {s.key: s for s in STUDIES}


def make_instance(inst: Instance) -> bytes:
    """A tiny Explicit VR Little Endian Part 10 file for ``inst``."""
    se, st = inst.series, inst.series.study
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = _SOP_CLASS[se.modality]
    ds.SOPInstanceUID = inst.uid
    ds.StudyDate = st.date
    ds.StudyTime = st.time
    ds.AccessionNumber = st.accession
    ds.Modality = se.modality
    ds.Manufacturer = se.manufacturer
    ds.ReferringPhysicianName = st.referrer
    ds.StudyDescription = st.description
    ds.ManufacturerModelName = inst.model
    ds.PatientName = st.patient.name
    ds.PatientID = st.patient.pid
    ds.SliceThickness = inst.slice_thickness
    ds.StudyInstanceUID = st.uid
    ds.SeriesInstanceUID = se.uid
    ds.StudyID = st.key
    ds.SeriesNumber = se.number
    ds.InstanceNumber = inst.number
    if st.key in _SITE_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = _SITE_CODES[st.key]
        ds.ProcedureCodeSequence = [item]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 2
    ds.Columns = 2
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x00\x01\x02\x03\x04\x05\x06\x07"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


_FILES = [make_instance(i) for i in INSTANCES]


async def _store_population(client: Any) -> None:
    body, ctype = multipart(_FILES)
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 200, await resp.text()
    stored = (await resp.json())["00081199"]["Value"]
    assert len(stored) == len(INSTANCES)


@asynccontextmanager
async def _archive(root: Path, **sections: dict[str, Any]) -> AsyncIterator[TestClient]:
    """A test client on a new archive under ``root`` holding the whole population."""
    async with TestClient(TestServer(create_app(make_config(root, **sections)))) as client:
        await _store_population(client)
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def archive(tmp_path_factory: pytest.TempPathFactory, db_backend: str) -> AsyncIterator[TestClient]:
    async with _archive(tmp_path_factory.mktemp("qido")) as client:
        yield client


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

Params = dict[str, str] | list[tuple[str, str]]


async def search(client: Any, path: str, params: Params | None = None,
                 expect: int = 200) -> list[dict[str, Any]]:
    resp = await client.get("/dicom-web" + path, params=params or {})
    text = await resp.text()
    assert resp.status == expect, (resp.status, text)
    assert resp.headers["Content-Type"].startswith("application/dicom+json")
    return await resp.json()


async def error(client: Any, path: str, params: Params | None = None, status: int = 400,
                headers: dict[str, str] | None = None) -> str:
    resp = await client.get("/dicom-web" + path, params=params or {}, headers=headers or {})
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    return text


def values(obj: dict[str, Any], tag: str) -> list[Any]:
    return obj.get(tag, {}).get("Value", [])


def first(obj: dict[str, Any], tag: str) -> Any:
    vals = values(obj, tag)
    return vals[0] if vals else None


def uid_set(results: list[dict[str, Any]], tag: str) -> set[str]:
    return {first(r, tag) for r in results}


def study_uids(results: list[dict[str, Any]]) -> set[str]:
    uids = [first(r, "0020000D") for r in results]
    assert len(uids) == len(set(uids)), "a study appears more than once"
    return set(uids)


def series_uids(results: list[dict[str, Any]]) -> set[str]:
    uids = [first(r, "0020000E") for r in results]
    assert len(uids) == len(set(uids)), "a series appears more than once"
    return set(uids)


def sop_uids(results: list[dict[str, Any]]) -> set[str]:
    uids = [first(r, "00080018") for r in results]
    assert len(uids) == len(set(uids)), "an instance appears more than once"
    return set(uids)


def studies_where(pred: Callable[[Study], bool]) -> set[str]:
    return {s.uid for s in STUDIES if pred(s)}


def studies_with_series(pred: Callable[[Series], bool]) -> set[str]:
    return {se.study.uid for se in SERIES if pred(se)}


def series_where(pred: Callable[[Series], bool]) -> set[str]:
    return {se.uid for se in SERIES if pred(se)}


def instances_where(pred: Callable[[Instance], bool]) -> set[str]:
    return {i.uid for i in INSTANCES if pred(i)}


def keys(*names: str) -> set[str]:
    return {STUDY[n].uid for n in names}


def in_range(value: str, low: str | None, high: str | None) -> bool:
    """Inclusive range on DA / full TM strings; empty values never match a range."""
    if not value:
        return False
    if low is not None and value < low:
        return False
    return high is None or value[: len(high)] <= high


def modalities_of(study: Study) -> list[str]:
    return sorted({se.modality for se in SERIES if se.study is study})


def series_of(study: Study) -> list[Series]:
    return [se for se in SERIES if se.study is study]


def instances_of_series(se: Series) -> list[Instance]:
    return [i for i in INSTANCES if i.series is se]


def instances_of_study(study: Study) -> list[Instance]:
    return [i for i in INSTANCES if i.series.study is study]


async def test_population_is_varied() -> None:
    """Guards the assumptions the tests below rely on."""
    assert len(STUDIES) == 7 and len(SERIES) == 9 and len(INSTANCES) == 13
    assert len({p.pid for p in (DOE_JOHN, DOE_JANE, SMITH, MUELLER)}) == 4
    assert any(len(series_of(s)) > 1 and len(modalities_of(s)) == 1 for s in STUDIES)


# ---------------------------------------------------------------------------------------------
# Single value matching
# ---------------------------------------------------------------------------------------------


async def test_everything_is_found_without_keys(archive) -> None:
    assert study_uids(await search(archive, "/studies")) == {s.uid for s in STUDIES}
    assert series_uids(await search(archive, "/series")) == {s.uid for s in SERIES}
    assert sop_uids(await search(archive, "/instances")) == {i.uid for i in INSTANCES}


@pytest.mark.parametrize("key", ["PatientID", "00100020"])
async def test_patient_id_keyword_and_tag(archive, key: str) -> None:
    found = await search(archive, "/studies", {key: "PID001"})
    assert study_uids(found) == studies_where(lambda s: s.patient.pid == "PID001")
    assert all(first(r, "00100020") == "PID001" for r in found)


async def test_patient_id_is_case_sensitive(archive) -> None:
    assert await search(archive, "/studies", {"PatientID": "pid001"}) == []


@pytest.mark.parametrize("value", ["ACC002", "acc002", "ACC%06", "ACC_05"])
async def test_accession_number_exact_and_case_sensitive(archive, value: str) -> None:
    found = await search(archive, "/studies", {"AccessionNumber": value})
    expected = studies_where(lambda s: s.accession == value)
    assert len(expected) == 1
    assert study_uids(found) == expected
    assert first(found[0], "00080050") == value


@pytest.mark.parametrize("value", ["chest pa", "CHEST PA", "MR BRAIN", "mr brain"])
async def test_study_description_single_value_is_case_sensitive(archive, value: str) -> None:
    found = await search(archive, "/studies", {"StudyDescription": value})
    assert study_uids(found) == studies_where(lambda s: s.description == value)


@pytest.mark.parametrize("value", ["Doe^John", "doe^john", "DOE^JOHN", "dOE^jOHN"])
async def test_patient_name_is_case_insensitive(archive, value: str) -> None:
    found = await search(archive, "/studies", {"PatientName": value})
    assert study_uids(found) == studies_where(lambda s: s.patient is DOE_JOHN)
    # The stored spelling is returned, not the query's.
    assert {first(r, "00100010")["Alphabetic"] for r in found} == {"Doe^John"}


async def test_patient_name_non_ascii_is_case_insensitive(archive) -> None:
    found = await search(archive, "/studies", {"PatientName": "müller^hans"})
    assert study_uids(found) == studies_where(lambda s: s.patient is MUELLER)
    assert first(found[0], "00100010") == {"Alphabetic": "Müller^Hans"}


async def test_referring_physician_name_is_case_insensitive(archive) -> None:
    found = await search(archive, "/studies", {"00080090": "house^GREGORY"})
    assert study_uids(found) == studies_where(lambda s: s.referrer == "House^Gregory") == keys("S2")


async def test_patient_name_single_value_is_not_a_prefix_match(archive) -> None:
    assert await search(archive, "/studies", {"PatientName": "Doe"}) == []


async def test_series_number_integer_matching(archive) -> None:
    found = await search(archive, "/series", {"SeriesNumber": "2"})
    assert series_uids(found) == series_where(lambda se: se.number == 2)
    assert {first(r, "00200011") for r in found} == {2}


async def test_instance_number_matching_within_series(archive) -> None:
    se = SERIES[0]
    found = await search(archive, f"/studies/{se.study.uid}/series/{se.uid}/instances",
                         {"InstanceNumber": "2"})
    assert sop_uids(found) == instances_where(lambda i: i.series is se and i.number == 2)


async def test_several_keys_are_anded(archive) -> None:
    found = await search(archive, "/studies", {"PatientID": "PID001", "Modality": "CT"})
    assert study_uids(found) == studies_with_series(
        lambda se: se.study.patient.pid == "PID001" and se.modality == "CT") == keys("S2")


# ---------------------------------------------------------------------------------------------
# Wildcards
# ---------------------------------------------------------------------------------------------


def _glob(pattern: str, value: str, fold: bool = False) -> bool:
    """PS3.4 C.2.2.2.4 wildcard semantics as the reference for expected results."""
    import re
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = re.IGNORECASE | re.DOTALL if fold else re.DOTALL
    return re.fullmatch(rx, value, flags) is not None


@pytest.mark.parametrize("pattern", [
    "*CHEST PA*",  # spaces inside a wildcard value
    "*chest pa*",  # case-sensitive: only the lower-case study
    "*CONTRAST",  # leading wildcard
    "CT*",
    "MR BRAI?",
    "50? CONTRAST",  # ? is exactly one character
    "50?CONTRAST",
    "50%*",  # % is literal: not "50" followed by anything
    "*%*",
    "?R*",
])
async def test_study_description_wildcards(archive, pattern: str) -> None:
    found = await search(archive, "/studies", {"StudyDescription": pattern})
    assert study_uids(found) == studies_where(lambda s: _glob(pattern, s.description))


async def test_wildcard_examples_have_the_expected_results(archive) -> None:
    """The reference (_glob) itself, pinned on the cases that matter."""
    async def found(p: str) -> set[str]:
        return study_uids(await search(archive, "/studies", {"StudyDescription": p}))

    assert await found("*CHEST PA*") == keys("S1")
    assert await found("*chest pa*") == keys("S6")
    assert await found("*CONTRAST") == keys("S2", "S4", "S5")
    assert await found("50%*") == keys("S4")
    assert await found("50? CONTRAST") == keys("S4", "S5")


@pytest.mark.parametrize("pattern", ["ACC%*", "ACC_0*", "ACC?0*", "acc*", "*05", "ACC00?"])
async def test_accession_wildcards_and_sql_metacharacters(archive, pattern: str) -> None:
    found = await search(archive, "/studies", {"AccessionNumber": pattern})
    expected = studies_where(lambda s: _glob(pattern, s.accession))
    assert expected  # every pattern here matches something
    assert study_uids(found) == expected


async def test_percent_and_underscore_are_literal(archive) -> None:
    async def found(p: str) -> set[str]:
        return study_uids(await search(archive, "/studies", {"AccessionNumber": p}))

    assert await found("ACC%*") == keys("S6")
    assert await found("ACC_0*") == keys("S4")
    assert await found("%") == set()
    assert await found("ACC_05") == keys("S4")
    assert await found("ACC_0_") == set()


@pytest.mark.parametrize("pattern", ["doe*", "DOE^J*", "*^jane", "d?e^j?hn", "*ü*", "*^*a*", "m?ller^*"])
async def test_patient_name_wildcards_are_case_insensitive(archive, pattern: str) -> None:
    found = await search(archive, "/studies", {"PatientName": pattern})
    expected = studies_where(lambda s: _glob(pattern, s.patient.name, fold=True))
    assert expected
    assert study_uids(found) == expected


async def test_patient_id_wildcard_on_instances(archive) -> None:
    found = await search(archive, "/instances", {"PatientID": "PID00?"})
    assert sop_uids(found) == {i.uid for i in INSTANCES}
    found = await search(archive, "/instances", {"00100020": "*3"})
    assert sop_uids(found) == instances_where(lambda i: i.series.study.patient.pid == "PID003")


# ---------------------------------------------------------------------------------------------
# UID list matching
# ---------------------------------------------------------------------------------------------


async def test_study_uid_list(archive) -> None:
    wanted = [STUDY["S1"].uid, STUDY["S3"].uid, STUDY["S7"].uid]
    found = await search(archive, "/studies", {"StudyInstanceUID": ",".join(wanted)})
    assert study_uids(found) == set(wanted)
    found = await search(archive, "/studies", {"0020000D": STUDY["S2"].uid})
    assert study_uids(found) == keys("S2")


async def test_series_uid_list(archive) -> None:
    wanted = [SERIES[0].uid, SERIES[4].uid]
    found = await search(archive, "/series", {"SeriesInstanceUID": ",".join(wanted)})
    assert series_uids(found) == set(wanted)
    # A series key on /studies finds the studies those series belong to.
    found = await search(archive, "/studies", {"SeriesInstanceUID": ",".join(wanted)})
    assert study_uids(found) == {SERIES[0].study.uid, SERIES[4].study.uid}


async def test_sop_uid_list(archive) -> None:
    wanted = [INSTANCES[0].uid, INSTANCES[5].uid, INSTANCES[12].uid]
    found = await search(archive, "/instances", {"SOPInstanceUID": ",".join(wanted)})
    assert sop_uids(found) == set(wanted)
    found = await search(archive, "/studies", {"00080018": ",".join(wanted)})
    assert study_uids(found) == {INSTANCES[i].series.study.uid for i in (0, 5, 12)}


async def test_uid_list_with_unknown_uid_matches_the_known_ones(archive) -> None:
    found = await search(archive, "/studies",
                         {"StudyInstanceUID": f"{STUDY['S4'].uid},1.2.3.4.5.6.7"})
    assert study_uids(found) == keys("S4")


# ---------------------------------------------------------------------------------------------
# Date and time ranges
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,low,high", [
    ("20200101-20201231", "20200101", "20201231"),
    ("20200101-", "20200101", None),
    ("-20191231", None, "20191231"),
    ("20200601", "20200601", "20200601"),
    ("20200115-20200115", "20200115", "20200115"),
    ("20210102-", "20210102", None),
])
async def test_study_date_ranges(archive, value: str, low: str | None, high: str | None) -> None:
    found = await search(archive, "/studies", {"StudyDate": value})
    expected = studies_where(lambda s: in_range(s.date, low, high))
    assert study_uids(found) == expected
    assert all(low is None or first(r, "00080020") >= low for r in found)


async def test_study_date_range_boundaries(archive) -> None:
    found = await search(archive, "/studies", {"StudyDate": "20200101-20201231"})
    # Both ends are inclusive; the study without a date matches no range.
    assert study_uids(found) == keys("S1", "S2", "S5", "S6")
    found = await search(archive, "/studies", {"00080020": "-20191231"})
    assert study_uids(found) == keys("S3")


@pytest.mark.parametrize("value,low,high", [
    ("080000-130000", "080000", "130000"),
    ("0800-1200", "0800", "1200"),
    ("2300-", "2300", None),
    ("-0830", None, "0830"),  # a partial upper bound covers everything it starts
    ("235959", "235959", "235959"),
    ("10:10-12:00", "1010", "1200"),
])
async def test_study_time_ranges(archive, value: str, low: str | None, high: str | None) -> None:
    found = await search(archive, "/studies", {"StudyTime": value})
    expected = studies_where(lambda s: in_range(s.time, low, high))
    assert expected
    assert study_uids(found) == expected


async def test_date_and_time_combined_with_series_key(archive) -> None:
    found = await search(archive, "/studies", {"StudyDate": "20200101-20200131", "Modality": "CR"})
    assert study_uids(found) == keys("S1", "S6")


@pytest.mark.parametrize("key,value", [
    ("StudyDate", "2020-01-01"),
    ("StudyDate", "202001"),
    ("StudyDate", "abcdefgh"),
    ("StudyDate", "20200101-2020"),
    ("StudyDate", "-"),
    ("StudyDate", "20200101--20200102"),
    ("StudyTime", "25"),
    ("StudyTime", "1261"),
    ("StudyTime", "noon"),
])
async def test_malformed_dates_and_times_are_refused(archive, key: str, value: str) -> None:
    text = await error(archive, "/studies", {key: value})
    assert key in text


# ---------------------------------------------------------------------------------------------
# Universal matching
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,tag", [("PatientAge", "00101010"), ("StudyDate", "00080020"),
                                     ("StudyDescription", "00081030"), ("IssuerOfPatientID", "00100021")])
async def test_empty_value_is_universal_and_returns_attribute(archive, key: str, tag: str) -> None:
    found = await search(archive, "/studies", {key: ""})
    assert study_uids(found) == {s.uid for s in STUDIES}
    assert all(tag in r for r in found)


async def test_empty_value_returns_a_non_default_attribute(archive) -> None:
    plain = await search(archive, "/series")
    assert all("00080070" not in r for r in plain)  # Manufacturer is not a default series key
    found = await search(archive, "/series", {"Manufacturer": ""})
    assert series_uids(found) == {s.uid for s in SERIES}
    by_uid = {s.uid: s for s in SERIES}
    for r in found:
        assert values(r, "00080070") == [by_uid[first(r, "0020000E")].manufacturer]


async def test_star_alone_matches_empty_values_too(archive) -> None:
    found = await search(archive, "/studies", {"AccessionNumber": "*"})
    assert study_uids(found) == {s.uid for s in STUDIES}


async def test_empty_values_are_returned_empty(archive) -> None:
    found = await search(archive, "/studies", {"StudyInstanceUID": STUDY["S7"].uid})
    assert len(found) == 1
    for tag in ("00080020", "00080030", "00080050", "00081030"):
        assert found[0][tag] == {"vr": found[0][tag]["vr"]}  # present, zero length


# ---------------------------------------------------------------------------------------------
# Modalities, relational queries and the hierarchy in the URL
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["CT", "MR", "CR", "CT,MR", "CR,MR", "US", "CT,US"])
async def test_modalities_in_study(archive, value: str) -> None:
    wanted = set(value.split(","))
    found = await search(archive, "/studies", {"ModalitiesInStudy": value})
    assert study_uids(found) == studies_where(lambda s: bool(wanted & set(modalities_of(s))))
    for r in found:
        assert set(values(r, "00080061")) & wanted


@pytest.mark.parametrize("value", ["CT", "CR", "MR,CT"])
async def test_modality_on_studies_is_relational_and_unique(archive, value: str) -> None:
    wanted = set(value.split(","))
    found = await search(archive, "/studies", {"Modality": value})
    # study_uids() also asserts that each study appears once (S1 has two CR series).
    assert study_uids(found) == studies_with_series(lambda se: se.modality in wanted)


async def test_modality_wildcard_on_series(archive) -> None:
    found = await search(archive, "/series", {"Modality": "C?"})
    assert series_uids(found) == series_where(lambda se: se.modality in ("CT", "CR"))


async def test_instance_key_on_studies(archive) -> None:
    found = await search(archive, "/studies", {"SOPClassUID": str(CTImageStorage)})
    assert study_uids(found) == studies_with_series(lambda se: se.modality == "CT")
    assert all("00080016" not in r for r in found)  # an instance attribute: not returned


async def test_modality_list_on_series(archive) -> None:
    found = await search(archive, "/series", {"00080060": "CT,MR"})
    assert series_uids(found) == series_where(lambda se: se.modality in ("CT", "MR"))
    assert {first(r, "00080060") for r in found} == {"CT", "MR"}


async def test_modalities_in_study_on_series_matches_the_study(archive) -> None:
    """ModalitiesInStudy is a study attribute: at the series level it selects every series of a
    study that has the modality, not only the series of that modality."""
    found = await search(archive, "/series", {"ModalitiesInStudy": "MR"})
    expected = series_where(lambda se: "MR" in modalities_of(se.study))
    assert any(se.modality != "MR" for se in SERIES if se.uid in expected)  # S3's CT series
    assert series_uids(found) == expected
    for r in found:
        assert "MR" in values(r, "00080061")


async def test_modalities_in_study_on_instances_matches_the_study(archive) -> None:
    found = await search(archive, "/instances", {"ModalitiesInStudy": "CT"})
    assert sop_uids(found) == instances_where(lambda i: "CT" in modalities_of(i.series.study))


@pytest.mark.parametrize("key", ["S1", "S3", "S7"])
async def test_series_of_a_study(archive, key: str) -> None:
    study = STUDY[key]
    expected = {se.uid for se in series_of(study)}
    via_key = await search(archive, "/series", {"StudyInstanceUID": study.uid})
    via_path = await search(archive, f"/studies/{study.uid}/series")
    assert series_uids(via_key) == series_uids(via_path) == expected


async def test_series_path_with_extra_key(archive) -> None:
    study = STUDY["S3"]
    found = await search(archive, f"/studies/{study.uid}/series", {"Modality": "CT"})
    assert series_uids(found) == {se.uid for se in series_of(study) if se.modality == "CT"}
    # A CT series exists elsewhere too, but it is not in this study.
    found = await search(archive, f"/studies/{STUDY['S1'].uid}/series", {"Modality": "CT"})
    assert found == []


@pytest.mark.parametrize("key", ["S1", "S2", "S3"])
async def test_instances_of_a_study(archive, key: str) -> None:
    study = STUDY[key]
    found = await search(archive, f"/studies/{study.uid}/instances")
    assert sop_uids(found) == {i.uid for i in instances_of_study(study)}
    assert {first(r, "0020000D") for r in found} == {study.uid}


async def test_instances_of_a_series(archive) -> None:
    for se in SERIES:
        found = await search(archive, f"/studies/{se.study.uid}/series/{se.uid}/instances")
        assert sop_uids(found) == {i.uid for i in instances_of_series(se)}
        assert {first(r, "0020000E") for r in found} == {se.uid}


async def test_instances_by_patient_id(archive) -> None:
    found = await search(archive, "/instances", {"PatientID": "PID002"})
    assert sop_uids(found) == instances_where(lambda i: i.series.study.patient.pid == "PID002")


async def test_no_results_leak_across_studies(archive) -> None:
    a, b = STUDY["S1"], STUDY["S2"]
    found = await search(archive, f"/studies/{a.uid}/series")
    assert {first(r, "0020000D") for r in found} == {a.uid}
    found = await search(archive, f"/studies/{a.uid}/series", {"SeriesInstanceUID": series_of(b)[0].uid})
    assert found == []
    # A series of B under the path of A: nothing.
    found = await search(archive, f"/studies/{a.uid}/series/{series_of(b)[0].uid}/instances")
    assert found == []
    found = await search(archive, f"/studies/{a.uid}/instances",
                         {"SOPInstanceUID": instances_of_study(b)[0].uid})
    assert found == []
    found = await search(archive, f"/studies/{a.uid}/instances", {"PatientID": "PID002"})
    assert found == []


async def test_unknown_study_gives_empty_list(archive) -> None:
    unknown = generate_uid()
    assert await search(archive, f"/studies/{unknown}/series") == []
    assert await search(archive, f"/studies/{unknown}/instances") == []
    assert await search(archive, "/studies", {"StudyInstanceUID": unknown}) == []


async def test_uid_in_path_and_query_is_refused(archive) -> None:
    uid = STUDY["S1"].uid
    text = await error(archive, f"/studies/{uid}/series", {"StudyInstanceUID": uid})
    assert "StudyInstanceUID" in text


# ---------------------------------------------------------------------------------------------
# Returned attributes: computed ones, RetrieveURL, defaults
# ---------------------------------------------------------------------------------------------


def _base(client: Any) -> str:
    return str(client.make_url("/dicom-web"))


async def test_study_level_computed_attributes(archive) -> None:
    found = await search(archive, "/studies")
    by_uid = {first(r, "0020000D"): r for r in found}
    assert set(by_uid) == {s.uid for s in STUDIES}
    base = _base(archive)
    for study in STUDIES:
        r = by_uid[study.uid]
        assert values(r, "00080061") == modalities_of(study)
        assert values(r, "00201206") == [len(series_of(study))]
        assert values(r, "00201208") == [len(instances_of_study(study))]
        assert values(r, "00081190") == [f"{base}/studies/{study.uid}"]
        assert r["00081190"]["vr"] == "UR"
        assert values(r, "00080056") == ["ONLINE"]  # InstanceAvailability
        assert values(r, "00081030") == ([study.description] if study.description else [])
        assert values(r, "00100020") == [study.patient.pid]
        assert values(r, "00200010") == [study.key]
        assert "00201209" not in r  # a series attribute


async def test_series_level_computed_attributes(archive) -> None:
    found = await search(archive, "/series")
    by_uid = {first(r, "0020000E"): r for r in found}
    assert set(by_uid) == {se.uid for se in SERIES}
    base = _base(archive)
    for se in SERIES:
        r = by_uid[se.uid]
        assert values(r, "00201209") == [len(instances_of_series(se))]
        assert values(r, "00080060") == [se.modality]
        assert values(r, "00200011") == [se.number]
        assert values(r, "00081190") == [f"{base}/studies/{se.study.uid}/series/{se.uid}"]
        assert values(r, "0020000D") == [se.study.uid]


async def test_instance_level_attributes(archive) -> None:
    found = await search(archive, "/instances")
    by_uid = {first(r, "00080018"): r for r in found}
    assert set(by_uid) == {i.uid for i in INSTANCES}
    base = _base(archive)
    for inst in INSTANCES:
        r = by_uid[inst.uid]
        se = inst.series
        assert values(r, "00081190") == [
            f"{base}/studies/{se.study.uid}/series/{se.uid}/instances/{inst.uid}"]
        assert values(r, "00080016") == [_SOP_CLASS[se.modality]]
        assert values(r, "00200013") == [inst.number]
        assert values(r, "00280010") == [2] and values(r, "00280011") == [2]
        assert values(r, "00280100") == [16]
        assert values(r, "0020000E") == [se.uid]
        assert values(r, "0020000D") == [se.study.uid]
        assert "00201209" not in r  # NumberOfSeriesRelatedInstances is a series attribute


async def test_retrieve_url_is_retrievable(archive) -> None:
    inst = INSTANCES[3]
    found = await search(archive, "/instances", {"SOPInstanceUID": inst.uid})
    url = first(found[0], "00081190")
    base = _base(archive)
    assert url.startswith(base)
    resp = await archive.get(url[len(base) - len("/dicom-web"):] + "/metadata")
    assert resp.status == 200
    assert first((await resp.json())[0], "00080018") == inst.uid


async def test_response_attributes_are_sorted_by_tag(archive) -> None:
    for path in ("/studies", "/series", "/instances"):
        for r in await search(archive, path, {"limit": "2"}):
            assert list(r) == sorted(r)


# ---------------------------------------------------------------------------------------------
# includefield
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["Manufacturer", "00080070"])
async def test_includefield_index_attribute(archive, field: str) -> None:
    found = await search(archive, "/series", {"includefield": field})
    by_uid = {s.uid: s for s in SERIES}
    assert len(found) == len(SERIES)
    for r in found:
        assert values(r, "00080070") == [by_uid[first(r, "0020000E")].manufacturer]


@pytest.mark.parametrize("field", ["SliceThickness", "00180050"])
async def test_includefield_stored_attribute_on_instances(archive, field: str) -> None:
    plain = await search(archive, "/instances")
    assert all("00180050" not in r for r in plain)
    found = await search(archive, "/instances", {"includefield": field})
    by_uid = {i.uid: i for i in INSTANCES}
    assert len(found) == len(INSTANCES)
    for r in found:
        assert r["00180050"]["vr"] == "DS"
        assert [float(v) for v in values(r, "00180050")] == [by_uid[first(r, "00080018")].slice_thickness]


async def test_includefield_comma_list_and_repeated(archive) -> None:
    se = SERIES[0]
    path = f"/studies/{se.study.uid}/series/{se.uid}/instances"
    for params in ({"includefield": "00081090,Manufacturer, SliceThickness"},
                   [("includefield", "00081090"), ("includefield", "Manufacturer"),
                    ("includefield", "SliceThickness")]):
        found = await search(archive, path, params)
        by_uid = {i.uid: i for i in instances_of_series(se)}
        assert sop_uids(found) == set(by_uid)
        for r in found:
            inst = by_uid[first(r, "00080018")]
            assert values(r, "00081090") == [inst.model]
            assert values(r, "00080070") == [se.manufacturer]
            assert [float(v) for v in values(r, "00180050")] == [inst.slice_thickness]


async def test_includefield_stored_attribute_on_series_and_studies(archive) -> None:
    found = await search(archive, "/series", {"includefield": "ManufacturerModelName"})
    by_uid = {se.uid: se for se in SERIES}
    for r in found:
        se = by_uid[first(r, "0020000E")]
        # Served from a stored instance of the series: one of its values.
        assert first(r, "00081090") in {i.model for i in instances_of_series(se)}
    found = await search(archive, "/studies", {"includefield": "00081090"})
    for r in found:
        study = next(s for s in STUDIES if s.uid == first(r, "0020000D"))
        assert first(r, "00081090") in {i.model for i in instances_of_study(study)}


async def test_includefield_all(archive) -> None:
    plain = await search(archive, "/series", {"SeriesInstanceUID": SERIES[0].uid})
    found = await search(archive, "/series", {"SeriesInstanceUID": SERIES[0].uid, "includefield": "all"})
    assert len(found) == 1
    assert set(plain[0]) < set(found[0])
    for tag in ("00080070", "00080080", "00080021", "00100010", "00080020"):
        assert tag in found[0]
    assert values(found[0], "00080070") == [SERIES[0].manufacturer]
    studies = await search(archive, "/studies", {"includefield": "all", "limit": "1"})
    assert "00101010" in studies[0]  # PatientAge, not a default study attribute


async def test_includefield_unknown_attribute_is_refused(archive) -> None:
    text = await error(archive, "/studies", {"includefield": "NoSuchKeyword"})
    assert "NoSuchKeyword" in text


# ---------------------------------------------------------------------------------------------
# The harmonized procedure code: a study attribute, requested at lower levels by includefield
# ---------------------------------------------------------------------------------------------

PROCEDURE_CODE_SEQUENCE = "00081032"


def _schemes(elem: dict[str, Any] | None) -> list[str]:
    return [first(item, "00080102") for item in (elem or {}).get("Value", [])]


async def _study_procedures(client: Any) -> dict[str, dict[str, Any] | None]:
    """Each study's ProcedureCodeSequence as the study-level search serves it (None: absent)."""
    return {first(r, "0020000D"): r.get(PROCEDURE_CODE_SEQUENCE) for r in await search(client, "/studies")}


async def test_study_results_carry_the_harmonized_code(archive) -> None:
    """The reference the lower levels are compared with: some studies harmonized, some not, and
    the sender's own item kept after the harmonized one."""
    procedures = await _study_procedures(archive)
    assert any(_schemes(e)[:1] == ["LN"] for e in procedures.values())
    assert any(e is None for e in procedures.values())  # unmapped, and no code sent
    s2 = procedures[STUDY["S2"].uid]
    assert _schemes(s2) == ["LN", SITE_CODE[1]]
    assert first(s2["Value"][1], "00080100") == SITE_CODE[0]


@pytest.mark.parametrize("field", ["00081032", "ProcedureCodeSequence", "all",
                                   "Manufacturer,00081032"])
@pytest.mark.parametrize("path,total", [("/studies", len(STUDIES)), ("/series", len(SERIES)),
                                        ("/instances", len(INSTANCES))])
async def test_includefield_procedure_code_at_every_level(archive, path: str, total: int,
                                                         field: str) -> None:
    """PS3.18 §10.6.3: a series or instance match returns the study attributes includefield asks
    for; the harmonized code is the study's, in the same sequence as the study result (which
    includefield leaves as it is: served from the index, not from a stored instance)."""
    procedures = await _study_procedures(archive)
    found = await search(archive, path, {"includefield": field})
    assert len(found) == total
    for r in found:
        assert r.get(PROCEDURE_CODE_SEQUENCE) == procedures[first(r, "0020000D")], first(r, "0020000D")
    assert any(_schemes(r.get(PROCEDURE_CODE_SEQUENCE))[:1] == ["LN"] for r in found)


async def test_includefield_procedure_code_on_a_study_path(archive) -> None:
    s2 = STUDY["S2"]
    expected = (await _study_procedures(archive))[s2.uid]
    for path in (f"/studies/{s2.uid}/series", f"/studies/{s2.uid}/instances"):
        found = await search(archive, path, {"includefield": "ProcedureCodeSequence"})
        assert found and all(r[PROCEDURE_CODE_SEQUENCE] == expected for r in found)


async def test_procedure_code_below_the_study_only_when_asked(archive) -> None:
    """Study results always carry it (test_study_results_carry_the_harmonized_code); series and
    instance results, whose defaults (PS3.18 Tables 10.6.3-4, -5) do not name it, only on request."""
    for path in ("/series", "/instances"):
        for params in ({}, {"includefield": "Manufacturer"}):
            found = await search(archive, path, params)
            assert found and all(PROCEDURE_CODE_SEQUENCE not in r for r in found)


@pytest.mark.parametrize("level", ["SERIES", "IMAGE"])
async def test_cfind_procedure_code_return_key_below_the_study(archive, level: str) -> None:
    """C-FIND shares the query model and result path: a ProcedureCodeSequence return key at the
    series or image level (Study Root, PS3.4 C.6.2) gets the study's sequence."""
    s2 = STUDY["S2"]
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    identifier.StudyInstanceUID = s2.uid
    identifier.ProcedureCodeSequence = []
    req = parse_identifier(identifier, STUDY_ROOT)
    req.query.visible = ALL
    found = await run_search(archive.app[ENGINE], req.query, 100, "")
    assert len(found.docs) == (len(series_of(s2)) if level == "SERIES" else len(instances_of_study(s2)))
    for doc in found.docs:
        seq = to_identifier(doc, req, "ARCHIVE").ProcedureCodeSequence
        assert [i.CodingSchemeDesignator for i in seq] == ["LN", SITE_CODE[1]]
        assert (seq[1].CodeValue, seq[1].CodeMeaning) == (SITE_CODE[0], SITE_CODE[2])


# ---------------------------------------------------------------------------------------------
# Fuzzy matching
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,patients", [
    ("john", [DOE_JOHN]),
    ("jo", [DOE_JOHN]),
    ("doe", [DOE_JOHN, DOE_JANE]),
    ("ANN", [SMITH]),
    ("hans müller", [MUELLER]),
    ("jane doe", [DOE_JANE]),
    ("ohn", []),  # words are matched from their start
])
async def test_fuzzy_patient_name(archive, value: str, patients: list[Patient]) -> None:
    found = await search(archive, "/studies", {"PatientName": value, "fuzzymatching": "true"})
    assert study_uids(found) == studies_where(lambda s: s.patient in patients)


@pytest.mark.parametrize("value", ["john", "Doe^John", "doe^john"])
async def test_fuzzy_false_is_exact(archive, value: str) -> None:
    off = await search(archive, "/studies", {"PatientName": value, "fuzzymatching": "false"})
    plain = await search(archive, "/studies", {"PatientName": value})
    expected = studies_where(lambda s: s.patient.name.upper() == value.upper())
    assert study_uids(off) == study_uids(plain) == expected


async def test_fuzzy_does_not_affect_other_attributes(archive) -> None:
    found = await search(archive, "/studies", {"StudyDescription": "chest", "fuzzymatching": "true"})
    assert found == []


async def test_fuzzymatching_bad_value_is_refused(archive) -> None:
    text = await error(archive, "/studies", {"fuzzymatching": "maybe"})
    assert "fuzzymatching" in text


# ---------------------------------------------------------------------------------------------
# Paging and the server maximum
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path,tag,total", [("/instances", "00080018", len(INSTANCES)),
                                            ("/studies", "0020000D", len(STUDIES)),
                                            ("/series", "0020000E", len(SERIES))])
@pytest.mark.parametrize("size", [1, 3, 4])
async def test_limit_offset_pages(archive, path: str, tag: str, total: int, size: int) -> None:
    whole = [first(r, tag) for r in await search(archive, path)]
    assert len(whole) == total
    pages: list[list[str]] = []
    for offset in range(0, total + size, size):
        page = await search(archive, path, {"limit": str(size), "offset": str(offset)})
        assert len(page) == max(0, min(size, total - offset))
        pages.append([first(r, tag) for r in page])
    joined = [u for p in pages for u in p]
    assert joined == whole  # disjoint, complete, and in the same stable order


async def test_offset_without_limit_and_beyond_the_end(archive) -> None:
    whole = [first(r, "00080018") for r in await search(archive, "/instances")]
    rest = await search(archive, "/instances", {"offset": "5"})
    assert [first(r, "00080018") for r in rest] == whole[5:]
    assert await search(archive, "/instances", {"offset": str(len(INSTANCES))}) == []
    assert await search(archive, "/instances", {"offset": "1000"}) == []


async def test_limit_applies_after_matching(archive) -> None:
    expected = instances_where(lambda i: i.series.modality == "CT")
    found = await search(archive, "/instances", {"Modality": "CT", "limit": "2"})
    assert len(found) == 2 and sop_uids(found) <= expected
    found = await search(archive, "/instances", {"Modality": "CT", "limit": "100"})
    assert sop_uids(found) == expected


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def small_max(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TestClient]:
    """The population on an archive configured with ``[qido] max_results = 3``."""
    async with _archive(tmp_path_factory.mktemp("qido-max"), qido={"max_results": 3}) as client:
        yield client


async def _warning(client: Any, path: str, params: Params | None = None) -> tuple[int, str | None]:
    resp = await client.get("/dicom-web" + path, params=params or {})
    assert resp.status == 200, await resp.text()
    return len(await resp.json()), resp.headers.get("Warning")


async def test_server_maximum_cuts_with_warning(small_max) -> None:
    n, warning = await _warning(small_max, "/instances")
    assert n == 3
    assert warning is not None and warning.startswith("299 ")
    n, warning = await _warning(small_max, "/instances", {"limit": "10"})  # above the maximum
    assert n == 3 and warning is not None
    n, warning = await _warning(small_max, "/studies", {"offset": "2"})
    assert n == 3 and warning is not None


async def test_no_warning_when_the_client_limit_cuts(small_max) -> None:
    assert await _warning(small_max, "/instances", {"limit": "2"}) == (2, None)
    assert await _warning(small_max, "/instances", {"limit": "3"}) == (3, None)


async def test_no_warning_when_everything_fits(small_max) -> None:
    s1 = STUDY["S1"]
    assert len(instances_of_study(s1)) == 3  # exactly the maximum
    assert await _warning(small_max, f"/studies/{s1.uid}/instances") == (3, None)
    assert await _warning(small_max, "/studies", {"PatientID": "PID001"}) == (2, None)
    n, warning = await _warning(small_max, "/studies", {"offset": str(len(STUDIES) - 3)})
    assert (n, warning) == (3, None)


async def test_server_maximum_pages_cover_everything(small_max) -> None:
    seen: list[str] = []
    offset = 0
    while True:
        resp = await small_max.get("/dicom-web/instances", params={"offset": str(offset)})
        page = await resp.json()
        seen.extend(first(r, "00080018") for r in page)
        if "Warning" not in resp.headers:
            break
        offset += len(page)
    assert len(seen) == len(set(seen)) and set(seen) == {i.uid for i in INSTANCES}


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["Foo", "PatientId", "patientname", "0010002", "XYZW1234"])
async def test_unknown_parameter_is_named(archive, param: str) -> None:
    text = await error(archive, "/studies", {param: "x"})
    assert param in text


@pytest.mark.parametrize("path,key,value", [
    ("/studies", "StudyInstanceUID", "1.2.abc"),
    ("/studies", "StudyInstanceUID", "1.02.3"),
    ("/studies", "StudyInstanceUID", "1.2.3,"),
    ("/series", "SeriesInstanceUID", "1..2"),
    ("/instances", "SOPInstanceUID", "1.2." + "3" * 70),
])
async def test_malformed_uid_is_refused(archive, path: str, key: str, value: str) -> None:
    text = await error(archive, path, {key: value})
    assert key in text


async def test_malformed_uid_in_path_is_refused(archive) -> None:
    await error(archive, "/studies/1.2.abc/series")
    await error(archive, f"/studies/{STUDY['S1'].uid}/series/not-a-uid/instances")


@pytest.mark.parametrize("name,value", [("limit", "-1"), ("limit", "99999999999"), ("limit", "ten"),
                                        ("offset", "abc"), ("offset", "-5"), ("offset", "1.5"),
                                        ("limit", "")])
async def test_bad_limit_and_offset_are_refused(archive, name: str, value: str) -> None:
    text = await error(archive, "/instances", {name: value})
    assert name in text


@pytest.mark.parametrize("key", ["SliceThickness", "00180050", "ManufacturerModelName"])
async def test_attribute_not_supported_for_matching(archive, key: str) -> None:
    text = await error(archive, "/instances", {key: "1"})
    assert "not supported" in text


@pytest.mark.parametrize("key", ["00081110.00081155", "ReferencedStudySequence.ReferencedSOPInstanceUID"])
async def test_sequence_keys_are_refused(archive, key: str) -> None:
    text = await error(archive, "/studies", {key: "X"})
    assert key in text and "sequence" in text


async def test_integer_key_with_text_is_refused(archive) -> None:
    text = await error(archive, "/series", {"SeriesNumber": "two"})
    assert "SeriesNumber" in text


async def test_key_given_twice_is_refused(archive) -> None:
    text = await error(archive, "/studies", [("PatientID", "PID001"), ("00100020", "PID002")])
    assert "PatientID" in text


@pytest.mark.parametrize("accept", ["application/dicom+xml",
                                    'multipart/related; type="application/dicom+xml"',
                                    "application/dicom+json;q=0"])
async def test_unsupported_accept_gives_406(archive, accept: str) -> None:
    for path in ("/studies", "/series", "/instances"):
        await error(archive, path, status=406, headers={"Accept": accept})


@pytest.mark.parametrize("accept", ["application/dicom+json", "application/json", "*/*",
                                    "application/dicom+xml, application/dicom+json;q=0.5"])
async def test_json_accept_is_served(archive, accept: str) -> None:
    resp = await archive.get("/dicom-web/studies", headers={"Accept": accept})
    assert resp.status == 200
    assert study_uids(await resp.json()) == {s.uid for s in STUDIES}


@pytest.mark.asyncio(loop_scope="function")
async def test_empty_archive(client) -> None:
    """On an empty archive (the conftest ``client``): searches give [] and the same refusals."""
    for path in ("/studies", "/series", "/instances"):
        assert await search(client, path) == []
    for name in ("limit", "offset", "fuzzymatching"):
        assert name in await error(client, "/studies", {name: "-x"})
    assert "Foo" in await error(client, "/studies", {"Foo": "1"})


async def test_includefield_of_a_lower_level_attribute_comes_from_stored_metadata(archive) -> None:
    """/studies?includefield=Modality: a series attribute, returned from the study's first instance."""
    found = await search(archive, "/studies", {"includefield": "Modality,SOPClassUID"})
    by_uid = {first(r, "0020000D"): r for r in found}
    for study in STUDIES:
        r = by_uid[study.uid]
        assert first(r, "00080060") in modalities_of(study)
        assert first(r, "00080016") is not None
