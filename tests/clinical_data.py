"""Synthetic MIDRC clinical data for tests: ``case.tsv``, ``measurement.tsv`` and
``imaging_study.tsv`` in MIDRC's submission format for given (PatientID, StudyInstanceUID) pairs,
with the generator's truth as Python objects.

Values follow MIDRC's enumerations (archive.clinical.dictionary) with roughly the proportions of
a COVID-19 imaging commons: some ages over 89 (flagged, no number), some unknown ages, "Not
Reported" answers, blank ICU/ventilator indicators, patients with several tests and studies.
The same seed gives the same files.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from archive.clinical import dictionary as d

# (value, weight) lists: the shares of each answer.
SEX = [("Female", 50), ("Male", 48), ("Not Reported", 2)]
RACE = [("White", 58), ("Black or African American", 22), ("Asian", 7), ("Other", 5), ("Not Reported", 6),
        ("American Indian or Alaska Native", 1), ("Native Hawaiian or other Pacific Islander", 1)]
ETHNICITY = [("Not Hispanic or Latino", 80), ("Hispanic or Latino", 12), ("Not Reported", 8)]
INDEX_EVENT = [("COVID-19 test", 70), ("Hospital admission", 20), ("First imaging study", 10)]
TEST_METHOD = [("RT-PCR", 85), ("Rapid antigen test", 15)]
TESTS_PER_CASE = [(0, 10), (1, 50), (2, 30), (3, 10)]

CASE_COLUMNS = ["type", "project_id", "submitter_id", "datasets.submitter_id", "age_at_index",
                "age_at_index_gt89", "case_ids", "covid19_positive", "ethnicity", "icu_indicator",
                "index_event", "race", "sex", "site_id", "ventilator_indicator"]
MEASUREMENT_COLUMNS = ["type", "project_id", "submitter_id", "cases.submitter_id", "case_ids",
                       "test_days_from_index", "test_method", "test_name", "test_result_text"]
STUDY_COLUMNS = ["type", "project_id", "submitter_id", "cases.submitter_id", "case_ids",
                 "days_from_study_to_neg_covid_test", "days_from_study_to_pos_covid_test", "days_to_study",
                 "study_uid"]


@dataclass(frozen=True)
class CaseTruth:
    submitter_id: str
    true_age: int | None  # the real age, also when over 89; None: unknown
    age_at_index: int | None  # as written: None over 89 or unknown
    age_at_index_gt89: str | None  # "Yes" over 89, "No" or blank otherwise
    sex: str
    race: str
    ethnicity: str
    covid19_positive: str
    index_event: str
    icu_indicator: bool | None
    ventilator_indicator: bool | None
    site: str
    has_images: bool

    def stored(self) -> dict[str, object]:
        """The row of ``cases`` this case should become (columns as stored)."""
        return {"submitter_id": self.submitter_id, "age_at_index": self.age_at_index,
                "age_at_index_gt89": self.age_at_index_gt89, "sex": self.sex, "race": self.race,
                "ethnicity": self.ethnicity, "covid19_positive": self.covid19_positive,
                "index_event": self.index_event, "icu_indicator": self.icu_indicator,
                "ventilator_indicator": self.ventilator_indicator, "site": self.site}


@dataclass(frozen=True)
class MeasurementTruth:
    submitter_id: str
    case: str
    test_method: str
    test_result_text: str
    test_days_from_index: int


@dataclass(frozen=True)
class StudyTruth:
    study_uid: str
    case: str
    days_to_study: int
    pos: list[int] | None  # days from the study to each positive test; None: no such test
    neg: list[int] | None


@dataclass
class ClinicalTruth:
    project_id: str
    cases: dict[str, CaseTruth] = field(default_factory=dict)
    measurements: dict[str, MeasurementTruth] = field(default_factory=dict)
    studies: dict[str, StudyTruth] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # node -> its TSV file


def _pick(rng: random.Random, choices: list[tuple[str, int]]) -> str:
    values, weights = zip(*choices, strict=True)
    return rng.choices(values, weights)[0]


def _tests(rng: random.Random, case: str, infected: bool) -> list[MeasurementTruth]:
    count = int(rng.choices([n for n, _ in TESTS_PER_CASE], [w for _, w in TESTS_PER_CASE])[0])
    out = []
    for i in range(count):
        day = 0 if i == 0 else rng.randint(-14, 30)  # the first test is often the index event
        if infected:
            result = "Positive" if rng.random() < 0.85 else "Negative"
        else:
            result = _pick(rng, [("Negative", 95), ("Indeterminate", 3), ("Not Reported", 2)])
        out.append(MeasurementTruth(f"{case}_covid_test_{i + 1}", case, _pick(rng, TEST_METHOD), result, day))
    return out


def _case(rng: random.Random, submitter_id: str, tests: list[MeasurementTruth], site: str,
          has_images: bool) -> CaseTruth:
    true_age: int | None = None
    age: int | None = None
    over89: str | None = None
    if rng.random() >= 0.03:  # 3 % unknown age
        true_age = max(0, min(104, round(rng.gauss(60, 18))))
        if true_age > 89:
            over89 = "Yes"
        else:
            age = true_age
            over89 = "No" if rng.random() < 0.7 else None
    results = {t.test_result_text for t in tests}
    if "Positive" in results:
        covid = "Yes"
    elif "Negative" in results:
        covid = "No"
    elif results:
        covid = "Indeterminate"
    else:
        covid = "Not Reported"
    icu: bool | None = None
    ventilator: bool | None = None
    if rng.random() >= 0.1:  # 10 % unknown
        icu = covid == "Yes" and rng.random() < 0.25
        ventilator = icu and rng.random() < 0.45
    return CaseTruth(submitter_id, true_age, age, over89, _pick(rng, SEX), _pick(rng, RACE),
                     _pick(rng, ETHNICITY), covid, _pick(rng, INDEX_EVENT), icu, ventilator, site, has_images)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _write(path: Path, columns: list[str], rows: list[dict[str, object]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])


def write_clinical_files(folder: Path, pairs: Sequence[tuple[str, str]], seed: int, *,
                         project_id: str = "Open-A1", cases_without_images: int = 0) -> ClinicalTruth:
    """Write case.tsv, measurement.tsv and imaging_study.tsv into ``folder`` for the patients and
    studies of ``pairs`` (PatientID, StudyInstanceUID), plus ``cases_without_images`` cases of
    patients with no study; return what was written."""
    rng = random.Random(seed)
    sites = [f"{rng.randint(100000, 999999)}" for _ in range(3)]
    truth = ClinicalTruth(project_id)
    patients = list(dict.fromkeys(p for p, _ in pairs))
    extra = [f"NOIMG-{seed}-{i + 1:03d}" for i in range(cases_without_images)]
    tests_of: dict[str, list[MeasurementTruth]] = {}
    for patient in patients + extra:
        tests = _tests(rng, patient, infected=rng.random() < 0.4)
        tests_of[patient] = tests
        truth.cases[patient] = _case(rng, patient, tests, rng.choice(sites), patient in patients)
        truth.measurements.update((t.submitter_id, t) for t in tests)
    for patient, study in pairs:
        days = rng.randint(-5, 40)
        tests = tests_of[patient]
        pos = [t.test_days_from_index - days for t in tests if t.test_result_text == "Positive"]
        neg = [t.test_days_from_index - days for t in tests if t.test_result_text == "Negative"]
        truth.studies[study] = StudyTruth(study, patient, days, pos or None, neg or None)

    folder.mkdir(parents=True, exist_ok=True)
    base = {"project_id": project_id}
    truth.files["case"] = folder / "case.tsv"
    _write(truth.files["case"], CASE_COLUMNS, [
        {**base, "type": "case", "submitter_id": c.submitter_id,
         "datasets.submitter_id": f"{project_id}-dataset", "age_at_index": c.age_at_index,
         "age_at_index_gt89": c.age_at_index_gt89, "case_ids": c.submitter_id,
         "covid19_positive": c.covid19_positive, "ethnicity": c.ethnicity, "icu_indicator": c.icu_indicator,
         "index_event": c.index_event, "race": c.race, "sex": c.sex, "site_id": c.site,
         "ventilator_indicator": c.ventilator_indicator} for c in truth.cases.values()])
    truth.files["measurement"] = folder / "measurement.tsv"
    _write(truth.files["measurement"], MEASUREMENT_COLUMNS, [
        {**base, "type": "measurement", "submitter_id": m.submitter_id, "cases.submitter_id": m.case,
         "case_ids": m.case, "test_days_from_index": m.test_days_from_index, "test_method": m.test_method,
         "test_name": d.TEST_NAME[0], "test_result_text": m.test_result_text}
        for m in truth.measurements.values()])
    truth.files["imaging_study"] = folder / "imaging_study.tsv"
    _write(truth.files["imaging_study"], STUDY_COLUMNS, [
        {**base, "type": "imaging_study", "submitter_id": s.study_uid, "cases.submitter_id": s.case,
         "case_ids": s.case, "days_from_study_to_neg_covid_test": s.neg,
         "days_from_study_to_pos_covid_test": s.pos, "days_to_study": s.days_to_study,
         "study_uid": s.study_uid}
        for s in truth.studies.values()])
    return truth
