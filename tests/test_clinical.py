"""Clinical data (MIDRC data dictionary): import of TSV / CSV / JSON, row-level errors that change
nothing, re-import, the HTTP API, the command line and the linkage report with stored images."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData, web
from sqlalchemy.ext.asyncio import AsyncEngine

from archive import keys
from archive.app import create_app
from archive.clinical import dictionary, import_clinical, linkage_report
from archive.clinical.cli import add_commands
from archive.clinical.importer import MAX_ERRORS, ClinicalError, ImportReport
from archive.index.db import create_engine, init_schema
from tests import synth
from tests.clinical_data import write_clinical_files
from tests.conftest import make_config, multipart

DOCS = Path(__file__).resolve().parent.parent / "docs" / "clinical.md"
TABLES = ("cases", "measurements", "imaging_study_clinical")

CASE = {"type": "case", "project_id": "Open-T1", "submitter_id": "P1", "age_at_index": "44",
        "age_at_index_gt89": "No", "sex": "Female", "race": "Asian", "ethnicity": "Not Hispanic or Latino",
        "covid19_positive": "Yes", "index_event": "COVID-19 test", "icu_indicator": "false",
        "ventilator_indicator": "false", "site_id": "419639"}
MEASUREMENT = {"type": "measurement", "project_id": "Open-T1", "submitter_id": "T1",
               "cases.submitter_id": "P1", "test_days_from_index": "0", "test_method": "RT-PCR",
               "test_name": "COVID-19", "test_result_text": "Positive"}
STUDY = {"type": "imaging_study", "project_id": "Open-T1", "submitter_id": "1.2.3.4",
         "cases.submitter_id": "P1", "days_from_study_to_neg_covid_test": "",
         "days_from_study_to_pos_covid_test": "-2,5", "days_to_study": "2"}


def case(submitter_id: str, **values: str) -> dict[str, str]:
    return {**CASE, "submitter_id": submitter_id, **values}


def measurement(submitter_id: str, case_id: str, **values: str) -> dict[str, str]:
    return {**MEASUREMENT, "submitter_id": submitter_id, "cases.submitter_id": case_id, **values}


def study(uid: str, case_id: str, **values: str) -> dict[str, str]:
    return {**STUDY, "submitter_id": uid, "cases.submitter_id": case_id, **values}


def table(rows: list[dict[str, str]], delimiter: str = "\t", newline: str = "\n") -> bytes:
    """A TSV (or CSV) file of ``rows``, its header from the first row's keys."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=newline)
    writer.writerow(list(rows[0]))
    for row in rows:
        writer.writerow(list(row.values()))
    return out.getvalue().encode()


def good_files() -> list[tuple[str, bytes]]:
    cases = [case("P1"), case("P2", sex="Male", age_at_index="", age_at_index_gt89="Yes")]
    tests = [measurement("T1", "P1"), measurement("T2", "P2", test_result_text="Negative")]
    return [("case.tsv", table(cases)), ("measurement.tsv", table(tests)),
            ("imaging_study.tsv", table([study("1.2.3.4", "P1")]))]


def snapshot(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the clinical tables, to prove that a failed import changed nothing."""
    with closing(sqlite3.connect(db)) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY pk").fetchall() for t in TABLES}


def rows(db: Path, name: str) -> dict[str, dict[str, Any]]:
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return {r["submitter_id"]: dict(r) for r in conn.execute(f"SELECT * FROM {name}")}


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'index.db'}")
    await init_schema(eng)
    yield eng
    await eng.dispose()


def test_docs_hold_the_dictionary() -> None:
    text = DOCS.read_text(encoding="utf-8")
    begin = text.index("<!-- dictionary:begin")
    section = text[text.index("\n", begin) + 1:text.index("<!-- dictionary:end -->")]
    assert section.strip() == dictionary.markdown().strip(), (
        "docs/clinical.md is out of date: paste archive.clinical.dictionary.markdown() between the markers")
    for node in dictionary.NODES.values():
        for f in node.fields:
            assert f"`{f.name}`" in section
            for value in f.allowed:
                assert f"`{value}`" in section


# ---------------------------------------------------------------- good files

async def test_generated_midrc_files_load_as_written(engine: AsyncEngine, tmp_path: Path) -> None:
    pairs = [(f"PAT-{i:03d}", synth.uid()) for i in range(150)]
    pairs += [(f"PAT-{i:03d}", synth.uid()) for i in range(0, 150, 3)]  # some patients have 2 studies
    truth = write_clinical_files(tmp_path / "clinical", pairs, seed=7, cases_without_images=4)
    # The generator's realism the cohort tests rely on.
    cases_truth = list(truth.cases.values())
    assert any(c.age_at_index_gt89 == "Yes" and c.age_at_index is None for c in cases_truth)
    assert any(c.true_age is None for c in cases_truth)
    assert any(c.sex == "Not Reported" or c.race == "Not Reported" for c in cases_truth)
    assert any(c.icu_indicator is None for c in cases_truth) and any(c.icu_indicator for c in cases_truth)
    assert sum(not c.has_images for c in cases_truth) == 4

    report = await import_clinical(engine, [(str(p), p.read_bytes()) for p in truth.files.values()])
    assert report.ok, report.errors
    assert report.counts["case"].inserted == 154
    assert report.counts["measurement"].inserted == len(truth.measurements)
    assert report.counts["imaging_study"].inserted == 200
    assert any("datasets.submitter_id" in note for note in report.notes)

    db = tmp_path / "index.db"
    stored = rows(db, "cases")
    for c in cases_truth:
        row = stored[c.submitter_id]
        for column, value in c.stored().items():
            expected = value if not isinstance(value, bool) else int(value)
            assert row[column] == expected, (c.submitter_id, column)
        assert row["project_id"] == "Open-A1"
    stored = rows(db, "measurements")
    for m in truth.measurements.values():
        row = stored[m.submitter_id]
        assert (row["case_submitter_id"], row["test_method"], row["test_result_text"],
                row["test_days_from_index"], row["test_name"]) == (
            m.case, m.test_method, m.test_result_text, m.test_days_from_index, "COVID-19")
    stored = rows(db, "imaging_study_clinical")
    for s in truth.studies.values():
        row = stored[s.study_uid]
        assert row["case_submitter_id"] == s.case and row["days_to_study"] == s.days_to_study
        assert (json.loads(row["days_from_study_to_pos_covid_test"] or "null"),
                json.loads(row["days_from_study_to_neg_covid_test"] or "null")) == (s.pos, s.neg)


def test_generator_is_deterministic(tmp_path: Path) -> None:
    pairs = [("A", "1.2.3"), ("B", "1.2.4")]
    one = write_clinical_files(tmp_path / "one", pairs, seed=3)
    two = write_clinical_files(tmp_path / "two", pairs, seed=3)
    other = write_clinical_files(tmp_path / "other", [(f"P{i}", f"1.2.{i}") for i in range(20)], seed=4)
    assert [p.read_bytes() for p in one.files.values()] == [p.read_bytes() for p in two.files.values()]
    assert one.cases == two.cases
    assert other.files["case"].read_bytes() != one.files["case"].read_bytes()


async def test_reimport_updates_what_it_gives(engine: AsyncEngine, tmp_path: Path) -> None:
    first = await import_clinical(engine, good_files())
    assert first.ok and first.counts["case"].inserted == 2 and first.counts["imaging_study"].inserted == 1
    db = tmp_path / "index.db"
    before = rows(db, "cases")
    # P1 changes sex and site; its age cell is empty (Gen3: an empty cell changes nothing); P3 is new.
    again = await import_clinical(engine, [
        ("case.tsv", table([case("P1", sex="Male", age_at_index="", site_id="S2"), case("P3")])),
        ("measurement.tsv", table([measurement("T1", "P1", test_result_text="Negative")])),
        ("imaging_study.tsv", table([study("1.2.3.4", "P3", days_to_study="7",
                                           days_from_study_to_pos_covid_test="")]))])
    assert again.ok, again.errors
    assert (again.counts["case"].inserted, again.counts["case"].updated) == (1, 1)
    assert (again.counts["measurement"].inserted, again.counts["measurement"].updated) == (0, 1)
    assert (again.counts["imaging_study"].inserted, again.counts["imaging_study"].updated) == (0, 1)
    after = rows(db, "cases")
    assert after["P1"]["sex"] == "Male" and after["P1"]["site"] == "S2"
    assert after["P1"]["age_at_index"] == 44 == before["P1"]["age_at_index"]
    assert after["P1"]["pk"] == before["P1"]["pk"] and after["P2"] == before["P2"]
    assert set(after) == {"P1", "P2", "P3"}
    assert rows(db, "measurements")["T1"]["test_result_text"] == "Negative"
    isc = rows(db, "imaging_study_clinical")["1.2.3.4"]
    assert (isc["case_submitter_id"], isc["days_to_study"]) == ("P3", 7)
    assert json.loads(isc["days_from_study_to_pos_covid_test"]) == [-2, 5]  # empty cell: unchanged


async def test_midrc_export_and_template_layouts(engine: AsyncEngine, tmp_path: Path) -> None:
    # As MIDRC's own case exports: link and system columns, an empty type column (the node from
    # the file name), extra properties this archive does not keep.
    export = (
        "datasets.submitter_id\tsubmitter_id\ttype\tage_at_index\tcovid19_positive\tcase_ids\t"
        "country_of_origin\tethnicity\ticu_indicator\tindex_event\trace\tsex\tsite_id\ttreatment_info\t"
        "ventilator_indicator\tzip\tproject_id\n"
        "\t100001-000314\t\t44\tNo\t100001-000314\tUnited States of America\tNot Hispanic or Latino\t\t\t"
        "Asian\tFemale\t100001\t\t\t946\tOpen-R1\n"
        "\t100001-000331\t\t69\tYes\t100001-000331\tUnited States of America\tNot Hispanic or Latino\t\t\t"
        "White\tMale\t100001\t\t\t941\tOpen-R1\n")
    # As MIDRC's submission templates: "*" on required columns; saved by Excel: BOM and CRLF.
    template = ("\ufeff*type\tproject_id\t*submitter_id\tcases.submitter_id\tconditions.submitter_id\t"
                "procedures.submitter_id\tcase_ids\ttest_days_from_index\ttest_method\ttest_name\t"
                "test_result_text\r\n"
                "measurement\tOpen-R1\tT-314-1\t100001-000314\t\t\t100001-000314\t-3\tRT-PCR\tCOVID-19\tNegative\r\n"
                "\r\n")
    report = await import_clinical(engine, [("case_RSNA_20220204.tsv", export.encode()),
                                            ("submission_measurement_template.tsv", template.encode())])
    assert report.ok, report.errors
    assert report.counts["case"].inserted == 2 and report.counts["measurement"].inserted == 1
    assert any("country_of_origin, datasets.submitter_id, treatment_info, zip" in n for n in report.notes)
    assert any("conditions.submitter_id, procedures.submitter_id" in n for n in report.notes)
    stored = rows(tmp_path / "index.db", "cases")
    assert stored["100001-000331"]["sex"] == "Male" and stored["100001-000331"]["site"] == "100001"
    assert stored["100001-000314"]["icu_indicator"] is None
    assert rows(tmp_path / "index.db", "measurements")["T-314-1"]["test_days_from_index"] == -3


async def test_csv_and_lenient_spellings(engine: AsyncEngine, tmp_path: Path) -> None:
    row = case("C1", sex="male", race="Native Hawaiian or Other Pacific Islander", age_at_index="44.0",
               icu_indicator="Yes", ventilator_indicator="FALSE", index_event="  Hospital admission ")
    row["site"] = row.pop("site_id")  # the name the archive stores it under, accepted too
    data = table([row], delimiter=",", newline="\r\n")
    report = await import_clinical(engine, [("cases-site3.csv", data)])
    assert report.ok, report.errors
    assert not report.notes
    row = rows(tmp_path / "index.db", "cases")["C1"]
    assert (row["sex"], row["race"], row["age_at_index"], row["icu_indicator"], row["ventilator_indicator"],
            row["index_event"], row["site"]) == (
        "Male", "Native Hawaiian or other Pacific Islander", 44, 1, 0, "Hospital admission", "419639")


async def test_json_import(engine: AsyncEngine, tmp_path: Path) -> None:
    records = [
        {"type": "case", "submitter_id": "J1", "age_at_index": 30, "sex": "Female", "icu_indicator": True,
         "site_id": 419639},
        {"type": "case", "submitter_id": "J2", "age_at_index_gt89": "Yes", "race": "White"},
        {"type": "measurement", "submitter_id": "JT1", "cases": {"submitter_id": "J1"},
         "test_name": "COVID-19", "test_result_text": "Positive", "test_days_from_index": -1},
        {"type": "imaging_study", "submitter_id": "1.2.840.99.1", "cases": [{"submitter_id": "J2"}],
         "days_to_study": 3, "days_from_study_to_pos_covid_test": [1, -4],
         "days_from_study_to_neg_covid_test": 2},
    ]
    report = await import_clinical(engine, [("clinical.json", json.dumps(records).encode())])
    assert report.ok, report.errors
    assert {n: c.inserted for n, c in report.counts.items()} == {
        "case": 2, "measurement": 1, "imaging_study": 1}
    db = tmp_path / "index.db"
    assert rows(db, "cases")["J1"]["site"] == "419639" and rows(db, "cases")["J1"]["icu_indicator"] == 1
    isc = rows(db, "imaging_study_clinical")["1.2.840.99.1"]
    assert json.loads(isc["days_from_study_to_pos_covid_test"]) == [1, -4]
    assert json.loads(isc["days_from_study_to_neg_covid_test"]) == [2]
    # The form by node, linking to a case stored by the previous import.
    by_node = {"measurement": [{"submitter_id": "JT2", "case_ids": ["J2"], "test_result_text": "negative"}]}
    report = await import_clinical(engine, [("more.json", json.dumps(by_node).encode())])
    assert report.ok, report.errors
    assert rows(db, "measurements")["JT2"]["test_result_text"] == "Negative"


# ---------------------------------------------------------------- bad files change nothing

def _utf16() -> list[tuple[str, bytes]]:
    return [("case.tsv", table([case("U1")]).decode().encode("utf-16"))]


def _utf16_no_bom() -> list[tuple[str, bytes]]:
    return [("case.tsv", table([case("U1")]).decode().encode("utf-16-le"))]


def _latin1() -> list[tuple[str, bytes]]:
    text = table([case("L1"), case("L2", index_event="Hospitalisé")]).decode()
    return [("case.tsv", text.encode("latin-1"))]


BAD: dict[str, tuple[list[tuple[str, bytes]], ClinicalError]] = {
    "missing submitter_id column": (
        [("case.tsv", b"type\tPatientID\tsex\ncase\tX1\tFemale\n")],
        ClinicalError("case.tsv", 1, "submitter_id", "required column missing")),
    "column of another node": (
        [("case.tsv", table([case("X1", test_result_text="Positive")]))],
        ClinicalError("case.tsv", 1, "test_result_text",
                      "a column of measurement records in a file of case")),
    "column twice": (
        [("case.tsv", b"type\tsubmitter_id\tsex\tsex\ncase\tX1\tFemale\tMale\n")],
        ClinicalError("case.tsv", 1, "sex", "the column 'sex' appears twice")),
    "link column missing": (
        [("measurement.tsv", b"type\tsubmitter_id\ttest_result_text\nmeasurement\tT9\tPositive\n")],
        ClinicalError("measurement.tsv", 1, "cases.submitter_id", "required link to the case missing")),
    "value not allowed": (
        [("case.tsv", table([case("X1"), case("X2", sex="F")]))],
        ClinicalError("case.tsv", 3, "sex", "'F' is not one of: Female, Male, Not Reported")),
    "age over 89 as a number": (
        [("case.tsv", table([case("X1", age_at_index="93")]))],
        ClinicalError("case.tsv", 2, "age_at_index",
                      "93 is above the maximum of 89; an age over 89 is a flag")),
    "over-89 flag with an age": (
        [("case.tsv", table([case("X1", age_at_index="50", age_at_index_gt89="Yes")]))],
        ClinicalError("case.tsv", 2, "age_at_index_gt89", "Yes, but age_at_index is 50")),
    "negative age": (
        [("case.tsv", table([case("X1", age_at_index="-1")]))],
        ClinicalError("case.tsv", 2, "age_at_index", "-1 is below the minimum of 0")),
    "not a number": (
        [("measurement.tsv", table([measurement("T9", "P1", test_days_from_index="two")]))],
        ClinicalError("measurement.tsv", 2, "test_days_from_index", "'two' is not a whole number")),
    "fraction of a day": (
        [("imaging_study.tsv", table([study("1.2.3.9", "P1", days_to_study="2.5")]))],
        ClinicalError("imaging_study.tsv", 2, "days_to_study", "'2.5' is not a whole number")),
    "bad list": (
        [("imaging_study.tsv", table([study("1.2.3.9", "P1", days_from_study_to_neg_covid_test="1;2")]))],
        ClinicalError("imaging_study.tsv", 2, "days_from_study_to_neg_covid_test",
                      "is not a list of whole numbers")),
    "not a boolean": (
        [("case.tsv", table([case("X1", icu_indicator="maybe")]))],
        ClinicalError("case.tsv", 2, "icu_indicator", "'maybe' is not true or false")),
    "unknown PatientID": (
        [("measurement.tsv", table([measurement("T9", "P1"), measurement("T10", "NOPE")]))],
        ClinicalError("measurement.tsv", 3, "cases.submitter_id",
                      "unknown case 'NOPE': neither in the files of this import nor in the archive")),
    "unknown PatientID by case_ids": (
        [("imaging_study.tsv",
          b"type\tsubmitter_id\tcase_ids\tdays_to_study\nimaging_study\t1.2.3.9\tNOPE\t1\n")],
        ClinicalError("imaging_study.tsv", 2, "case_ids", "unknown case 'NOPE'")),
    "empty link": (
        [("measurement.tsv", table([measurement("T9", "")]))],
        ClinicalError("measurement.tsv", 2, "cases.submitter_id", "required, but empty")),
    "empty submitter_id": (
        [("case.tsv", table([case("X1"), case("")]))],
        ClinicalError("case.tsv", 3, "submitter_id", "required, but empty")),
    "submitter_id longer than a PatientID": (
        [("case.tsv", table([case("X" * 65)]))],
        ClinicalError("case.tsv", 2, "submitter_id", "is 65 characters long, more than 64")),
    "duplicate rows": (
        [("case.tsv", table([case("X1"), case("X1", sex="Male")]))],
        ClinicalError("case.tsv", 3, "submitter_id", "duplicate case 'X1': also at case.tsv line 2")),
    "duplicate across files": (
        [("case.tsv", table([case("X1")])), ("case_site2.tsv", table([case("X2"), case("X1")]))],
        ClinicalError("case_site2.tsv", 3, "submitter_id", "duplicate case 'X1': also at case.tsv line 2")),
    "UTF-16": (_utf16(), ClinicalError("case.tsv", 0, "", "UTF-16 text")),
    "UTF-16 without BOM": (_utf16_no_bom(), ClinicalError("case.tsv", 1, "", "contains NUL bytes")),
    "Latin-1": (_latin1(), ClinicalError("case.tsv", 3, "", "not UTF-8: byte 0xE9 at line 3")),
    "empty file": ([("case.tsv", b"")], ClinicalError("case.tsv", 0, "", "empty file")),
    "blank file": ([("case.tsv", b"\xef\xbb\xbf\r\n\r\n")], ClinicalError("case.tsv", 0, "", "empty file")),
    "header only": (
        [("case.tsv", b"type\tsubmitter_id\tsex\n")],
        ClinicalError("case.tsv", 1, "", "no records: the file has a header and nothing else")),
    "invalid StudyInstanceUID": (
        [("imaging_study.tsv", table([study("1.2.03", "P1")]))],
        ClinicalError("imaging_study.tsv", 2, "submitter_id", "'1.2.03' is not a valid DICOM UID")),
    "study_uid differs": (
        [("imaging_study.tsv", table([study("1.2.3.9", "P1", study_uid="1.2.3.10")]))],
        ClinicalError("imaging_study.tsv", 2, "study_uid", "differs from submitter_id '1.2.3.9'")),
    "more cells than columns": (
        [("case.tsv", b"type\tsubmitter_id\tsex\ncase\tX1\tFemale\tsurplus\n")],
        ClinicalError("case.tsv", 2, "", "4 cells, but the header has 3 columns")),
    "unknown node": (
        [("ct_series.tsv", b"type\tsubmitter_id\nct_series\t1.2.3\n")],
        ClinicalError("ct_series.tsv", 1, "type", "'ct_series' is not a node this archive imports")),
    "no type, unknown name": (
        [("patients.tsv", b"submitter_id\tsex\nX1\tFemale\n")],
        ClinicalError("patients.tsv", 1, "type", "no type: give a type column")),
    "name and type disagree": (
        [("measurement.tsv", table([case("X1")]))],
        ClinicalError("measurement.tsv", 1, "type",
                      "the file name says measurement but its type column says case")),
    "row of another node": (
        [("case.tsv", table([case("X1"), case("X2", type="measurement")]))],
        ClinicalError("case.tsv", 3, "type", "type 'measurement' in a file of case records")),
    "malformed CSV": (
        [("case.csv", b'type,submitter_id,sex\ncase,X1,Female\ncase,X2,"Female"x\n')],
        ClinicalError("case.csv", 3, "", "malformed CSV")),
    "malformed JSON": (
        [("case.json", b'[\n{"type": "case", "submitter_id": "X1",}\n]')],
        ClinicalError("case.json", 2, "", "not valid JSON")),
    "bad JSON record": (
        [("clinical.json", json.dumps([
            {"type": "case", "submitter_id": "X1"},
            {"type": "case", "submitter_id": "X2", "age_at_index": "old"}]).encode())],
        ClinicalError("clinical.json", 2, "age_at_index", "'old' is not a whole number")),
    "JSON record without a type": (
        [("clinical.json", json.dumps([{"submitter_id": "X1"}]).encode())],
        ClinicalError("clinical.json", 1, "type", "no type")),
}


@pytest.mark.parametrize("name", list(BAD))
async def test_bad_files_give_row_level_errors_and_change_nothing(engine: AsyncEngine, tmp_path: Path,
                                                                   name: str) -> None:
    assert (await import_clinical(engine, good_files())).ok
    db = tmp_path / "index.db"
    before = snapshot(db)
    files, expected = BAD[name]
    # Good records beside the bad ones: an import that stopped half-way would leave them behind.
    extra = [("case_extra.tsv", table([case("NEW-1"), case("P1", sex="Male")])),
             ("measurement_extra.tsv", table([measurement("T-NEW", "NEW-1")]))]
    report = await import_clinical(engine, extra + files)
    assert not report.ok
    assert any(e.file == expected.file and e.line == expected.line and e.field == expected.field
               and expected.reason in e.reason for e in report.errors), report.errors
    assert report.error_count == len(report.errors)
    assert all(c.inserted == c.updated == 0 for c in report.counts.values())
    assert snapshot(db) == before


async def test_link_to_an_invalid_case_row_is_not_an_unknown_case(engine: AsyncEngine) -> None:
    report = await import_clinical(engine, [("case.tsv", table([case("X1", sex="F")])),
                                            ("measurement.tsv", table([measurement("T9", "X1")]))])
    assert report.errors == [
        ClinicalError("case.tsv", 2, "sex", "'F' is not one of: Female, Male, Not Reported")]


async def test_concurrent_imports_of_the_same_records(tmp_path: Path) -> None:
    # Several engines on one file stand for processes (the command line beside the server): each
    # import finds the records new, one wins the insert, the others retry and update.
    url = f"sqlite+aiosqlite:///{tmp_path / 'index.db'}"
    engines = [create_engine(url) for _ in range(4)]
    try:
        await init_schema(engines[0])
        jobs = [import_clinical(e, good_files()) for e in engines for _ in range(2)]
        reports = await asyncio.gather(*jobs)
    finally:
        for e in engines:
            await e.dispose()
    assert all(r.ok for r in reports)
    assert sum(r.counts["case"].inserted for r in reports) == 2
    assert sum(r.counts["case"].updated for r in reports) == 2 * (len(reports) - 1)
    assert sum(r.counts["imaging_study"].inserted for r in reports) == 1
    assert set(rows(tmp_path / "index.db", "cases")) == {"P1", "P2"}


async def test_errors_are_all_reported_up_to_a_cap(engine: AsyncEngine, tmp_path: Path) -> None:
    bad_rows = [case(f"X{i}", sex="F", race="Martian") for i in range(MAX_ERRORS)]
    report = await import_clinical(engine, [("case.tsv", table(bad_rows))])
    assert report.error_count == 2 * MAX_ERRORS
    assert len(report.errors) == MAX_ERRORS
    assert [(e.line, e.field) for e in report.errors[:4]] == [
        (2, "sex"), (2, "race"), (3, "sex"), (3, "race")]
    assert snapshot(tmp_path / "index.db") == {t: [] for t in TABLES}


async def test_no_files_is_an_error(engine: AsyncEngine) -> None:
    report = await import_clinical(engine, [])
    assert not report.ok and report.errors == [ClinicalError("", 0, "", "no files")]


def test_report_json_shape() -> None:
    report = ImportReport()
    report.error("a.tsv", 3, "sex", "bad")
    assert report.to_json() == {
        "ok": False, "error_count": 1, "notes": [],
        "counts": {"case": {"inserted": 0, "updated": 0}, "measurement": {"inserted": 0, "updated": 0},
                   "imaging_study": {"inserted": 0, "updated": 0}},
        "errors": [{"file": "a.tsv", "line": 3, "field": "sex", "reason": "bad"}]}


# ---------------------------------------------------------------- HTTP

def _has_clinical_routes(app: web.Application) -> bool:
    return any(getattr(r, "canonical", None) == "/api/clinical" for r in app.router.resources())


@pytest.fixture
async def api(aiohttp_client, tmp_path: Path):
    app = create_app(make_config(tmp_path))
    assert _has_clinical_routes(app)  # registered by archive/app.py
    return await aiohttp_client(app)


async def test_http_single_file_and_errors(api, tmp_path: Path) -> None:
    body = table([case("H1"), case("H2")]).replace(b"type\t", b"").replace(b"case\t", b"")  # no type column
    resp = await api.post("/api/clinical?node=case", data=body,
                          headers={"Content-Type": "text/tab-separated-values; charset=utf-8"})
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert result["ok"] and result["counts"]["case"] == {"inserted": 2, "updated": 0}

    db = tmp_path / "index.db"
    before = snapshot(db)
    bad = table([case("H3"), case("H1", ethnicity="Latino")], delimiter=",")
    resp = await api.post("/api/clinical", data=bad, headers={"Content-Type": "text/csv"})
    assert resp.status == 422
    result = await resp.json()
    assert not result["ok"] and result["error_count"] == 1
    (error,) = result["errors"]
    assert (error["file"], error["line"], error["field"]) == ("body.csv", 3, "ethnicity")
    assert error["reason"] == ("'Latino' is not one of: Hispanic or Latino, Not Hispanic or Latino, "
                               "Not Reported")
    assert snapshot(db) == before

    resp = await api.post("/api/clinical", data=json.dumps([case("H4")]).encode(),
                          headers={"Content-Type": "application/json"})
    assert resp.status == 200 and (await resp.json())["counts"]["case"]["inserted"] == 1


async def test_http_multipart_form_data(api, tmp_path: Path) -> None:
    form = FormData()
    for name, data in good_files():
        form.add_field("files", data, filename=name, content_type="text/tab-separated-values")
    resp = await api.post("/api/clinical", data=form)
    assert resp.status == 200, await resp.text()
    counts = (await resp.json())["counts"]
    assert {n: c["inserted"] for n, c in counts.items()} == {"case": 2, "measurement": 2, "imaging_study": 1}

    form = FormData()
    form.add_field("files", table([case("P9")]), filename="case.tsv")
    form.add_field("files", "type\tsubmitter_id\n".encode("utf-16"), filename="measurement.tsv")
    resp = await api.post("/api/clinical", data=form)
    assert resp.status == 422
    assert [(e["file"], e["line"]) for e in (await resp.json())["errors"]] == [("measurement.tsv", 0)]
    assert "P9" not in rows(tmp_path / "index.db", "cases")


@pytest.mark.parametrize(("path", "ctype", "status"), [
    ("/api/clinical", "text/plain", 415),
    ("/api/clinical", "", 415),
    ("/api/clinical?node=patient", "text/csv", 400),
    ("/api/clinical", "multipart/form-data; boundary=xyz", 400),
])
async def test_http_bad_requests(api, path: str, ctype: str, status: int) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    resp = await api.post(path, data=b"type,submitter_id\ncase,X\n", headers=headers)
    assert resp.status == status
    assert (await resp.json())["ok"] is False


@pytest.mark.parametrize("limit", ["0", "-1", "x", "100001"])
async def test_http_report_bad_limit(api, limit: str) -> None:
    resp = await api.get("/api/clinical/report", params={"limit": limit})
    assert resp.status == 400


# ---------------------------------------------------------------- linkage report

async def _stow(api, patient_id: str, study_uid: str) -> None:
    body, ctype = multipart([synth.instance(study=study_uid, patient_id=patient_id)])
    resp = await api.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 200, await resp.text()


@pytest.mark.databases
async def test_linkage_report(api, tmp_path: Path) -> None:
    a1, a2, b1, c1, unknown = (synth.uid() for _ in range(5))
    for patient, study_uid in (("A", a1), ("A", a2), ("B", b1), ("C", c1)):
        await _stow(api, patient, study_uid)
    engine = api.server.app[keys.ENGINE]
    report = await import_clinical(engine, [
        ("case.tsv", table([case("A"), case("B"), case("D")])),
        ("imaging_study.tsv", table([study(a1, "A"), study(b1, "A"), study(unknown, "D")]))])
    assert report.ok, report.errors

    resp = await api.get("/api/clinical/report")
    assert resp.status == 200
    result = await resp.json()
    assert (result["patients_with_images"], result["cases"], result["linked_patients"]) == (3, 3, 2)
    assert result["patients_without_clinical"] == ["C"]
    assert result["cases_without_images"] == ["D"]
    assert result["imaging_studies_without_images"] == [unknown]
    assert result["studies_without_clinical"] == sorted([a2, c1])
    assert result["study_case_mismatches"] == [{"study_uid": b1, "case_submitter_id": "A", "patient_id": "B"}]
    assert result["studies_without_clinical_count"] == 2

    cut = await linkage_report(engine, limit=1)
    assert cut.studies_without_clinical == [min(a2, c1)] and cut.studies_without_clinical_count == 2
    resp = await api.get("/api/clinical/report", params={"limit": "1"})
    assert (await resp.json())["studies_without_clinical"] == [min(a2, c1)]


# ---------------------------------------------------------------- command line

def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="imaging-archive")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_cli_import_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[database]\nurl = "sqlite+aiosqlite:///index.db"\n', encoding="utf-8")
    for name, data in good_files():
        (tmp_path / name).write_bytes(data)
    files = [str(tmp_path / name) for name, _ in good_files()]
    assert run_cli("clinical", "import", *files, "--config", str(config)) == 0
    out = capsys.readouterr().out
    assert "case: 2 inserted, 0 updated" in out and "imaging_study: 1 inserted, 0 updated" in out

    before = snapshot(tmp_path / "index.db")
    bad = tmp_path / "case_bad.tsv"
    bad.write_bytes(table([case("P1", sex="Male"), case("P5", covid19_positive="maybe")]))
    assert run_cli("clinical", "import", str(bad), "--config", str(config)) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3: covid19_positive: 'maybe' is not one of: Yes, No, Indeterminate, Not Reported" in err
    assert "nothing was imported" in err
    assert snapshot(tmp_path / "index.db") == before

    assert run_cli("clinical", "import", str(tmp_path / "missing.tsv"), "--config", str(config)) == 2
    capsys.readouterr()

    assert run_cli("clinical", "report", "--config", str(config), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cases_without_images"] == ["P1", "P2"] and result["patients_with_images"] == 0
    assert run_cli("clinical", "report", "--config", str(config)) == 0
    assert "cases without images: 2\n  P1\n  P2" in capsys.readouterr().out


def test_wired_into_the_imaging_archive_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from archive.cli import main

    config = tmp_path / "config.toml"
    config.write_text('[database]\nurl = "sqlite+aiosqlite:///index.db"\n', encoding="utf-8")
    code = main(["clinical", "report", "--config", str(config), "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["cases"] == 0
