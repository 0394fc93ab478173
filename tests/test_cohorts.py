"""Cohorts end to end: a generated multi-site data set (study descriptions drawn from MIDRC's gen3
distribution, several sites, vendors and modalities, MIDRC clinical TSVs) is stored through
STOW-RS and POST /api/clinical; cohort counts, facets, pages, manifests and zips are checked
against what the generator made, computed here in Python without the archive's SQL."""

from __future__ import annotations

import argparse
import asyncio
import csv
import fnmatch
import io
import json
import random
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer
from dicomweb_client import DICOMwebClient
from pydicom import dcmread

from archive.app import create_app
from archive.auth import new_token, token_hash
from archive.cohorts import cli as cohort_cli
from archive.cohorts.filters import NAMES
from archive.cohorts.query import AGE_GROUPS, FACETS
from archive.harmonize import Harmonizer
from tests import synth
from tests.clinical_data import CaseTruth, ClinicalTruth, write_clinical_files
from tests.conftest import make_config, multipart
from tests.samples import IN_CI, REPO

# Run on SQLite and on PostgreSQL (tests/pg.py).
pytestmark = pytest.mark.databases

GEN3 = REPO.parent / "shared" / "reference" / "midrc-harmonization" / "study_descriptions_gen3.tsv"
DOCS = REPO / "docs" / "cohorts.md"
# Used when ../shared is missing outside CI: (Modality, StudyDescription, frequency) of gen3.
FALLBACK = [("DX", "XR CHEST 1 VIEW AP", 20540), ("DX", "XR Chest AP or PA", 18273),
            ("CR", "XR PORT CHEST 1V", 15011), ("CR", "XR CHEST PA AND LATERAL", 4000),
            ("CT", "CT CHEST WITHOUT CONTRAST", 5000), ("CT", "CT ABDOMEN PELVIS W CONTRAST", 3000),
            ("CT", "CT HEAD WO CONTRAST", 2500), ("MR", "MRI BRAIN W WO CONTRAST", 800),
            ("CT,PT", "PET CT SKULL BASE TO MID THIGH", 300)]
# Modality families drawn in these shares (then descriptions by frequency within each), so that
# the few hundred studies hold several modalities, PET/CT included.
MODALITY_MIX = {"DX": 33, "CR": 24, "CT": 30, "MR": 8, "CT,PT": 5}
# (InstitutionName, main Manufacturer): sites; a series is by another vendor now and then.
SITES = [("Site A University Hospital", "GE MEDICAL SYSTEMS"), ("Site B Medical Center", "SIEMENS"),
         ("Site C Clinic", "Philips Medical Systems, Inc."),
         ("Site D Community Hospital", "FUJIFILM Corporation")]
OTHER_VENDORS = ["Carestream Health", "Canon Medical Systems"]
N_STUDIES = 200
N_PATIENTS = 120
STOW_BATCH = 50
QUERY = "/api/cohorts/query"


# ---------------------------------------------------------------- the generated data set

@dataclass
class GenSeries:
    uid: str
    modality: str
    manufacturer: str
    institution: str
    body_part: str
    sops: dict[str, int] = field(default_factory=dict)  # SOPInstanceUID -> file size


@dataclass
class GenStudy:
    uid: str
    patient_id: str
    date: str  # "" when the study has no StudyDate
    description: str
    series: list[GenSeries]
    code: str | None = None  # the harmonized LOINC code, name and region of its placement
    code_name: str | None = None
    region: str | None = None

    @property
    def modalities(self) -> set[str]:
        return {s.modality for s in self.series}

    @property
    def instances(self) -> int:
        return sum(len(s.sops) for s in self.series)

    @property
    def size(self) -> int:
        return sum(sum(s.sops.values()) for s in self.series)


@dataclass
class DataSet:
    root: Path
    studies: dict[str, GenStudy]
    clinical: ClinicalTruth
    files: dict[str, bytes]  # SOPInstanceUID -> the file sent

    def case(self, study: GenStudy) -> CaseTruth | None:
        return self.clinical.cases.get(study.patient_id)


def _descriptions(rng: random.Random) -> list[tuple[str, str, int]]:
    if not GEN3.is_file():
        if IN_CI:
            pytest.fail(f"CI=true but the MIDRC reference is missing at {GEN3}")
        return FALLBACK
    rows = []
    with GEN3.open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            modality = row["Modality"].replace(" ", "")
            if modality in MODALITY_MIX and row["StudyDescription"].strip():
                rows.append((modality, row["StudyDescription"], int(row["frequency"])))
    return rows


def _body_part(description: str) -> str:
    text = description.upper()
    for words, part in ((("CHEST", "THORAX", "LUNG"), "CHEST"), (("ABD", "PELVIS"), "ABDOMEN"),
                        (("HEAD", "BRAIN"), "HEAD")):
        if any(w in text for w in words):
            return part
    return ""


def _draw(rng: random.Random) -> list[GenStudy]:
    pool = _descriptions(rng)
    by_family: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for modality, description, freq in pool:
        by_family[modality].append((description, freq))
    families = [m for m in MODALITY_MIX if by_family[m]]
    patients = [f"COH-{i:04d}" for i in range(N_PATIENTS)]
    site_of = {p: rng.choice(SITES) for p in patients}
    out = []
    for i in range(N_STUDIES):
        family = rng.choices(families, [MODALITY_MIX[m] for m in families])[0]
        descs, weights = zip(*by_family[family], strict=True)
        description = rng.choices(descs, weights)[0]
        patient = patients[i] if i < N_PATIENTS else rng.choice(patients)
        institution, vendor = site_of[patient]
        part = _body_part(description)
        modalities = family.split(",")
        if rng.random() < 0.15:
            modalities.append(modalities[0])  # a second series of the main modality
        series = []
        for modality in modalities:
            maker = vendor if rng.random() < 0.85 else rng.choice(OTHER_VENDORS)
            n = rng.choices([1, 2, 3], [80, 15, 5])[0]
            series.append(GenSeries(synth.uid(), modality, maker, institution, part,
                                    {synth.uid(): 0 for _ in range(n)}))
        date = "" if rng.random() < 0.05 else \
            f"{rng.randint(2019, 2023)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        out.append(GenStudy(synth.uid(), patient, date, description, series))
    return out


def _files(study: GenStudy) -> dict[str, bytes]:
    files = {}
    for number, s in enumerate(study.series, 1):
        for k, sop in enumerate(s.sops, 1):
            ds = synth.dataset(study=study.uid, series=s.uid, sop=sop, patient_id=study.patient_id,
                               patient_name=f"Cohort^{study.patient_id}", modality=s.modality,
                               instance_number=k, fill=k)
            ds.SeriesNumber = number
            ds.StudyDescription = study.description
            ds.Manufacturer = s.manufacturer
            ds.InstitutionName = s.institution
            if s.body_part:
                ds.BodyPartExamined = s.body_part
            if study.date:
                ds.StudyDate = study.date
            else:
                del ds.StudyDate
            data = synth.encode(ds)
            s.sops[sop] = len(data)
            files[sop] = data
    return files


async def _load(root: Path, studies: list[GenStudy], files: dict[str, bytes]) -> ClinicalTruth:
    client = TestClient(TestServer(create_app(make_config(root))))
    await client.start_server()
    try:
        parts = list(files.values())
        for i in range(0, len(parts), STOW_BATCH):
            body, ctype = multipart(parts[i:i + STOW_BATCH])
            resp = await client.post("/dicom-web/studies", data=body,
                                     headers={"Content-Type": ctype, "Accept": "application/dicom+json"})
            assert resp.status == 200, await resp.text()
        # Most patients have a MIDRC case; some have none (images without clinical data).
        rng = random.Random(5)
        with_case = {s.patient_id for s in studies if rng.random() < 0.9}
        pairs = [(s.patient_id, s.uid) for s in studies if s.patient_id in with_case]
        truth = write_clinical_files(root / "clinical", pairs, seed=11, cases_without_images=3)
        form = FormData()
        for node, path in truth.files.items():
            form.add_field("files", path.read_bytes(), filename=f"{node}.tsv",
                           content_type="text/tab-separated-values")
        resp = await client.post("/api/clinical", data=form)
        assert resp.status == 200, await resp.text()
    finally:
        await client.close()
    return truth


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, db_backend: str) -> DataSet:
    rng = random.Random(20240611)
    root = tmp_path_factory.mktemp("cohorts")
    studies = _draw(rng)
    files: dict[str, bytes] = {}
    for study in studies:
        files.update(_files(study))
    harmonizer = Harmonizer.load()
    for study in studies:  # what ingest places them on: modalities, description, body part, images
        p = harmonizer.place(sorted(study.modalities), study.description,
                             study.series[0].body_part, study.instances)
        if p.procedure is not None:
            study.code, study.code_name, study.region = p.code, p.name, p.procedure.region
    clinical = asyncio.run(_load(root, studies, files))
    return DataSet(root, {s.uid: s for s in studies}, clinical, files)


@pytest.fixture
async def client(aiohttp_client, data: DataSet):
    return await aiohttp_client(create_app(make_config(data.root)))


# ---------------------------------------------------------------- the expected answers, in Python

def _any_matches(values: list[str], candidates: set[str]) -> bool:
    return any(fnmatch.fnmatchcase(c, v) if ("*" in v or "?" in v) else c == v
               for v in values for c in candidates)


def _in_range(value: int | None, bounds: dict[str, int]) -> bool:
    return value is not None and bounds.get("min", value) <= value <= bounds.get("max", value)


def _age(case: CaseTruth) -> int | None:
    """The age a filter compares: every age over 89 is 90 (MIDRC only flags it)."""
    return None if case.true_age is None else min(case.true_age, 90)


def _age_group(case: CaseTruth | None) -> str:
    if case is None or case.true_age is None:
        return "unknown"
    for upper, label in ((18, "0-17"), (30, "18-29"), (40, "30-39"), (50, "40-49"), (65, "50-64"),
                         (75, "65-74"), (85, "75-84")):
        if case.true_age < upper:
            return label
    return "85+"


def matches(data: DataSet, s: GenStudy, f: dict[str, Any]) -> bool:
    one = {k: v if isinstance(v, list) else [v] for k, v in f.items()}
    series_values = {"modality": {x.modality for x in s.series}, "body_part": {x.body_part for x in s.series},
                     "manufacturer": {x.manufacturer for x in s.series},
                     "institution": {x.institution for x in s.series}}
    for name, candidates in series_values.items():
        if name in f and not _any_matches(one[name], candidates - {""}):
            return False
    if "study_date" in f:
        dates = f["study_date"]
        if isinstance(dates, str):  # a DICOM range
            dates = dict(zip(("from", "to"), dates.split("-"), strict=True))
        low, high = dates.get("from") or "00000000", dates.get("to") or "99999999"
        if not s.date or not low.replace("-", "") <= s.date <= high.replace("-", ""):
            return False
    if "loinc_code" in f and s.code not in one["loinc_code"]:
        return False
    if "body_region" in f and s.region not in one["body_region"]:
        return False
    if "images" in f and not _in_range(s.instances, f["images"]):
        return False
    if "series" in f and not _in_range(len(s.series), f["series"]):
        return False
    clinical = [k for k in f if k in ("covid19_positive", "sex", "race", "ethnicity", "age",
                                      "icu_indicator", "ventilator_indicator")]
    if not clinical:
        return True
    case = data.case(s)
    if case is None:
        return False
    for name in ("covid19_positive", "sex", "race", "ethnicity"):
        # MIDRC's enumerations, in any capitalisation; true / false for COVID-19 positive / negative.
        wanted = [{True: "Yes", False: "No"}.get(v, v).lower() for v in one.get(name, [])]
        if name in f and getattr(case, name).lower() not in wanted:
            return False
    if "age" in f and not _in_range(_age(case), f["age"]):
        return False
    return all(getattr(case, name) is f[name] for name in ("icu_indicator", "ventilator_indicator")
               if name in f)


def expected(data: DataSet, f: dict[str, Any]) -> tuple[dict[str, int], dict[str, dict[Any, tuple[int, int]]],
                                                         list[GenStudy]]:
    chosen = [s for s in data.studies.values() if matches(data, s, f)]
    counts = {"patients": len({s.patient_id for s in chosen}), "studies": len(chosen),
              "series": sum(len(s.series) for s in chosen), "instances": sum(s.instances for s in chosen),
              "bytes": sum(s.size for s in chosen)}
    groups: dict[str, dict[Any, tuple[set[str], set[str]]]] = {n: defaultdict(lambda: (set(), set()))
                                                              for n in FACETS}

    def add(facet: str, value: Any, s: GenStudy) -> None:
        studies, patients = groups[facet][value]
        studies.add(s.uid)
        patients.add(s.patient_id)

    for s in chosen:
        case = data.case(s)
        for x in s.series:
            add("modality", x.modality, s)
            add("manufacturer", x.manufacturer, s)
        add("loinc", (s.code, s.code_name), s)
        add("body_region", s.region, s)
        for name in ("sex", "race", "ethnicity", "covid19_positive"):
            add(name, getattr(case, name) if case else None, s)
        add("age_group", _age_group(case), s)
        add("study_year", s.date[:4] or None, s)
    facets = {n: {v: (len(st), len(pt)) for v, (st, pt) in g.items()} for n, g in groups.items()}
    return counts, facets, chosen


def got_facets(body: dict[str, Any]) -> dict[str, dict[Any, tuple[int, int]]]:
    out = {}
    for name, entries in body["facets"].items():
        key = (lambda e: (e["value"], e["name"])) if name == "loinc" else (lambda e: e["value"])
        out[name] = {key(e): (e["studies"], e["patients"]) for e in entries}
    return out


def combinations(data: DataSet) -> list[dict[str, Any]]:
    """Filter objects over the generated data, the last ones drawn from it so they select something."""
    studies = list(data.studies.values())
    # Clinical + DICOM + image count + LOINC code: the most common code among the multi-image
    # studies of COVID-positive patients, and a modality of one of them.
    pool = [s for s in studies
            if s.instances >= 2 and s.code and (c := data.case(s)) and c.covid19_positive == "Yes"]
    code = max({s.code for s in pool}, key=lambda c: sum(s.code == c for s in pool))
    modality = sorted(next(s for s in pool if s.code == code).modalities)[0]
    region = max({s.region for s in studies if s.region}, key=lambda r: sum(s.region == r for s in studies))
    return [
        {},
        {"modality": "CT"},
        {"modality": ["CT"], "covid19_positive": True},
        {"modality": ["DX", "CR"], "sex": "Female", "age": {"min": 50, "max": 64}},
        {"covid19_positive": "Yes", "modality": [modality], "images": {"min": 2}, "loinc_code": code},
        {"age": {"min": 85}},
        {"age": {"max": 29}, "sex": ["Male", "Not Reported"]},
        {"study_date": {"from": "2020-03-01", "to": "2021-06-30"}, "manufacturer": ["SIEMENS", "Philips*"],
         "race": ["White", "Asian"]},
        {"icu_indicator": True},
        {"ventilator_indicator": False, "ethnicity": "hispanic or latino"},
        {"body_part": "CHEST", "series": {"min": 2}},
        {"institution": "Site B*", "body_region": region},
        {"covid19_positive": ["No", "Indeterminate", "Not Reported"], "study_date": "20210101-"},
        {"modality": "PT", "manufacturer": "GE MEDICAL SYSTEMS"},
    ]


async def cohort(client: TestClient, filters: dict[str, Any], headers: dict[str, str] | None = None,
                 **extra: Any) -> dict[str, Any]:
    resp = await client.post(QUERY, json={"filters": filters, **extra}, headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


# ---------------------------------------------------------------- tests

def test_generated_data_is_realistic(data: DataSet) -> None:
    studies = list(data.studies.values())
    assert len(studies) == N_STUDIES and 200 <= len(data.files) <= 400
    assert {m for s in studies for m in s.modalities} >= {"CT", "DX", "CR", "MR", "PT"}
    assert len({x.institution for s in studies for x in s.series}) == len(SITES)
    assert len({x.manufacturer for s in studies for x in s.series}) >= 5
    assert sum(s.code is not None for s in studies) > N_STUDIES * 0.7  # placed by the harmonizer
    assert any(data.case(s) is None for s in studies)  # images without clinical data
    assert any(c.age_at_index_gt89 == "Yes" for c in data.clinical.cases.values())
    assert any(not s.date for s in studies) and any(len(s.series) > 1 for s in studies)


async def test_counts_and_facets_equal_the_generated_truth(client: TestClient, data: DataSet) -> None:
    nonempty = 0
    for f in combinations(data):
        body = await cohort(client, f, limit=N_STUDIES)
        counts, facets, chosen = expected(data, f)
        assert body["counts"] == counts, f
        assert got_facets(body) == {n: v for n, v in facets.items()}, f
        assert {s["StudyInstanceUID"] for s in body["studies"]} == {s.uid for s in chosen}, f
        assert body["more"] is False
        # Facet order: most studies first; age groups in band order.
        for name, entries in body["facets"].items():
            if name == "age_group":
                assert [e["value"] for e in entries] == [g for g in AGE_GROUPS if g in facets[name]]
            elif name != "study_year":
                order = [e["studies"] for e in entries]
                assert order == sorted(order, reverse=True)
        nonempty += counts["studies"] > 0
    assert nonempty >= len(combinations(data)) - 1  # the filters really select (not vacuous)


async def test_clinical_filters_need_a_case(client: TestClient, data: DataSet) -> None:
    everything = await cohort(client, {}, limit=0, facets=False)
    with_case = await cohort(client, {"covid19_positive": ["Yes", "No", "Indeterminate", "Not Reported"]},
                             limit=0, facets=False)
    without = sum(data.case(s) is None for s in data.studies.values())
    assert without > 0
    assert everything["counts"]["studies"] == N_STUDIES
    assert with_case["counts"]["studies"] == N_STUDIES - without
    assert "facets" not in everything and everything["studies"] == []


async def test_age_over_89_is_85_plus_and_90(client: TestClient, data: DataSet) -> None:
    over = [s for s in data.studies.values() if (c := data.case(s)) and c.age_at_index_gt89 == "Yes"]
    assert over
    body = await cohort(client, {"age": {"min": 90}}, limit=N_STUDIES, facets=True)
    assert {s["StudyInstanceUID"] for s in body["studies"]} == {s.uid for s in over}
    assert [e["value"] for e in body["facets"]["age_group"]] == ["85+"]
    below = await cohort(client, {"age": {"max": 89}}, limit=N_STUDIES, facets=False)
    assert not {s["StudyInstanceUID"] for s in below["studies"]} & {s.uid for s in over}


async def test_study_page(client: TestClient, data: DataSet) -> None:
    f = {"modality": ["DX", "CR", "CT"]}
    _, _, chosen = expected(data, f)
    seen: list[dict[str, Any]] = []
    offset = 0
    while True:
        body = await cohort(client, f, limit=37, offset=offset, facets=False)
        seen += body["studies"]
        if not body["more"]:
            break
        offset += 37
    assert [s["StudyInstanceUID"] for s in seen] == [s.uid for s in chosen]  # stored order, no repeats
    base = str(client.make_url("/dicom-web"))
    for entry in seen:
        s = data.studies[entry["StudyInstanceUID"]]
        assert entry["PatientID"] == s.patient_id and entry["StudyDate"] == (s.date or None)
        assert entry["StudyDescription"] == s.description
        assert entry["ModalitiesInStudy"] == sorted(s.modalities)
        assert (entry["loinc_code"], entry["loinc_name"], entry["body_region"]) == \
            (s.code, s.code_name, s.region)
        assert (entry["series"], entry["instances"], entry["bytes"]) == (len(s.series), s.instances, s.size)
        assert entry["url"] == f"{base}/studies/{s.uid}" and entry["thumbnail"] == entry["url"] + "/thumbnail"
    # The URLs work: the study's thumbnail, and its metadata.
    resp = await client.get(seen[0]["thumbnail"].removeprefix(str(client.make_url(""))),
                            headers={"Accept": "image/jpeg"})
    assert resp.status == 200 and (await resp.read())[:2] == b"\xff\xd8"


async def test_dicom_filters_are_the_qido_query(client: TestClient, data: DataSet) -> None:
    """The DICOM filters match as the same keys of QIDO-RS (one query model)."""
    cases = [({"modality": "CT", "study_date": "20200101-20221231"},
              {"ModalitiesInStudy": "CT", "StudyDate": "20200101-20221231"}),
             ({"manufacturer": "SIEMENS*", "body_part": "CHEST"},
              {"Manufacturer": "SIEMENS*", "BodyPartExamined": "CHEST"})]
    code = next(s.code for s in data.studies.values() if s.code)
    cases.append(({"loinc_code": code}, {"ProcedureCodeSequence.CodeValue": code}))
    for filters, params in cases:
        body = await cohort(client, filters, limit=N_STUDIES, facets=False)
        resp = await client.get("/dicom-web/studies", params={**params, "limit": "1000"},
                                headers={"Accept": "application/dicom+json"})
        assert resp.status in (200, 204)
        qido = {d["0020000D"]["Value"][0] for d in (await resp.json() if resp.status == 200 else [])}
        assert qido and {s["StudyInstanceUID"] for s in body["studies"]} == qido


async def _manifest(client: TestClient, cohort_id: str, fmt: str) -> tuple[Any, str]:
    resp = await client.get(f"/api/cohorts/{cohort_id}/manifest", params={"format": fmt})
    assert resp.status == 200, await resp.text()
    return resp, await resp.text()


async def test_saved_cohort_manifest_and_zip(client: TestClient, data: DataSet) -> None:
    filters = {"modality": ["CT", "DX"], "covid19_positive": True, "study_date": {"from": "20190101"}}
    _, _, chosen = expected(data, filters)
    assert chosen
    resp = await client.post("/api/cohorts", json={"name": "covid CT/DX", "filters": filters})
    assert resp.status == 201, await resp.text()
    saved = await resp.json()
    cid = saved["id"]
    assert resp.headers["Location"] == f"/api/cohorts/{cid}"
    assert saved["filters"] == {"modality": ["CT", "DX"], "study_date": {"from": "20190101"},
                                "covid19_positive": ["Yes"]}

    want = {(s.uid, x.uid): (s, x) for s in chosen for x in s.series}
    base = str(client.make_url("/dicom-web"))
    resp, text = await _manifest(client, cid, "json")
    assert resp.content_type == "application/json"
    doc = json.loads(text)
    assert doc["cohort"]["id"] == cid and doc["cohort"]["filters"] == saved["filters"]
    rows = doc["series"]
    assert len(rows) == len(want)
    for row in rows:
        s, x = want[(row["StudyInstanceUID"], row["SeriesInstanceUID"])]
        assert row == {"StudyInstanceUID": s.uid, "SeriesInstanceUID": x.uid, "PatientID": s.patient_id,
                       "Modality": x.modality, "study_url": f"{base}/studies/{s.uid}",
                       "series_url": f"{base}/studies/{s.uid}/series/{x.uid}",
                       "instances": len(x.sops), "bytes": sum(x.sops.values())}
    assert doc["totals"] == {"studies": len(chosen), "series": len(want),
                             "instances": sum(s.instances for s in chosen),
                             "bytes": sum(s.size for s in chosen)}

    resp, text = await _manifest(client, cid, "csv")
    assert resp.content_type == "text/csv"
    table = list(csv.DictReader(io.StringIO(text)))
    assert [(r["StudyInstanceUID"], r["SeriesInstanceUID"], int(r["instances"]), int(r["bytes"]))
            for r in table] == [(r["StudyInstanceUID"], r["SeriesInstanceUID"], r["instances"], r["bytes"])
                                for r in rows]

    resp = await client.get(f"/api/cohorts/{cid}/zip")
    assert resp.status == 200 and resp.content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(await resp.read())) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        expected_names = {f"{s.uid}/{x.uid}/{sop}.dcm" for s, x in want.values() for sop in x.sops}
        assert len(names) == len(expected_names) and set(names) == expected_names
        for name in names:
            blob = zf.read(name)
            sop = name.rsplit("/", 1)[1].removesuffix(".dcm")
            assert blob == data.files[sop]
            ds = dcmread(io.BytesIO(blob))
            assert ds.SOPInstanceUID == sop
            assert name.startswith(f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/")

    # dicomweb-client fetches a series the manifest lists, from its URLs (blocking: in a thread).
    row = max(rows, key=lambda r: r["instances"])
    web = DICOMwebClient(url=doc["cohort"]["dicomweb"])
    assert row["series_url"].startswith(web.base_url)
    fetched = await asyncio.to_thread(web.retrieve_series, row["StudyInstanceUID"], row["SeriesInstanceUID"])
    _, x = want[(row["StudyInstanceUID"], row["SeriesInstanceUID"])]
    assert sorted(ds.SOPInstanceUID for ds in fetched) == sorted(x.sops)


async def test_saved_cohorts_round_trip(client: TestClient, data: DataSet, aiohttp_client) -> None:
    filters = {"sex": "female", "age": {"min": 18, "max": 64}, "modality": "DX"}
    counts, _, _ = expected(data, filters)
    resp = await client.post("/api/cohorts", json={"name": "  adult women DX ", "filters": filters})
    assert resp.status == 201
    saved = await resp.json()
    assert saved["name"] == "adult women DX"
    assert saved["filters"] == {"modality": ["DX"], "sex": ["Female"], "age": {"min": 18, "max": 64}}
    assert saved["links"]["manifest"].endswith(f"/api/cohorts/{saved['id']}/manifest?format=json")

    resp = await client.get(f"/api/cohorts/{saved['id']}")
    got = await resp.json()
    assert got["counts"] == counts and got["filters"] == saved["filters"]
    assert got["created"] == saved["created"] and got["created"].endswith("Z")
    # The normalized filters select the same cohort.
    assert (await cohort(client, saved["filters"], limit=0))["counts"] == counts

    # Stored: a new server on the same archive has it under the same id.
    other = await aiohttp_client(create_app(make_config(data.root)))
    listed = await (await other.get("/api/cohorts")).json()
    assert {c["id"]: c["filters"] for c in listed}[saved["id"]] == saved["filters"]
    assert (await (await other.get(f"/api/cohorts/{saved['id']}")).json())["counts"] == counts

    assert (await client.delete(f"/api/cohorts/{saved['id']}")).status == 204
    for path in (f"/api/cohorts/{saved['id']}", f"/api/cohorts/{saved['id']}/manifest",
                 f"/api/cohorts/{saved['id']}/zip", "/api/cohorts/not-an-id"):
        resp = await client.get(path)
        assert resp.status == 404 and (await resp.json())["ok"] is False
    assert (await client.delete(f"/api/cohorts/{saved['id']}")).status == 404
    assert saved["id"] not in {c["id"] for c in await (await client.get("/api/cohorts")).json()}


BAD_FILTERS = [
    ({"modalty": "CT"}, "modalty"),
    ({"modality": 3}, "modality"),
    ({"modality": []}, "modality"),
    ({"modality": ["CT", ""]}, "modality"),
    ({"modality": "*"}, "modality"),
    ({"manufacturer": "GE\\SIEMENS"}, "manufacturer"),
    ({"manufacturer": "\ud800"}, "manufacturer"),
    ({"study_date": "2020-13-01"}, "study_date.from"),
    ({"study_date": "2020"}, "study_date"),
    ({"study_date": "2020010120201231"}, "study_date"),
    ({"study_date": "-"}, "study_date"),
    ({"study_date": "20201301-"}, "study_date.from"),
    ({"study_date": {"from": "20210101", "to": "20200101"}}, "study_date"),
    ({"study_date": {"since": "20200101"}}, "study_date"),
    ({"study_date": 2020}, "study_date"),
    ({"sex": "Femme"}, "sex"),
    ({"race": ["White", 1]}, "race"),
    ({"covid19_positive": "maybe"}, "covid19_positive"),
    ({"age": {"min": 64, "max": 50}}, "age"),
    ({"age": {"min": -1}}, "age.min"),
    ({"age": {"max": 120}}, "age.max"),
    ({"age": {"min": "50"}}, "age.min"),
    ({"age": 50}, "age"),
    ({"age": {}}, "age"),
    ({"images": {"min": 1.5}}, "images.min"),
    ({"series": {"max": True}}, "series.max"),
    ({"icu_indicator": "sometimes"}, "icu_indicator"),
    ({"ventilator_indicator": 1}, "ventilator_indicator"),
    ({"loinc_code": {"code": "1"}}, "loinc_code"),
    (["modality", "CT"], "filters"),
]


@pytest.mark.parametrize(("filters", "field"), BAD_FILTERS)
async def test_bad_filters_are_400_naming_the_field(client: TestClient, filters: Any, field: str) -> None:
    for path, body in ((QUERY, {"filters": filters}), ("/api/cohorts", {"name": "x", "filters": filters})):
        resp = await client.post(path, json=body)
        assert resp.status == 400, await resp.text()
        problem = await resp.json()
        assert problem["ok"] is False and problem["field"] == field and problem["error"].startswith(field)


@pytest.mark.parametrize(("body", "headers", "status", "field"), [
    (b"{not json", {"Content-Type": "application/json"}, 400, None),
    (b"[1]", {"Content-Type": "application/json"}, 400, None),
    (b"\xff\xfe", {"Content-Type": "application/json"}, 400, None),
    (b"[" * 100_000, {"Content-Type": "application/json"}, 400, None),
    (b'{"filters": {}}', {"Content-Type": "text/plain"}, 415, None),
    (b'{"filter": {}}', {"Content-Type": "application/json"}, 400, "filter"),
    (b'{"limit": -1}', {"Content-Type": "application/json"}, 400, "limit"),
    (b'{"limit": 100000}', {"Content-Type": "application/json"}, 400, "limit"),
    (b'{"offset": "2"}', {"Content-Type": "application/json"}, 400, "offset"),
    (b'{"limit": NaN}', {"Content-Type": "application/json"}, 400, "limit"),
    (b'{"facets": "yes"}', {"Content-Type": "application/json"}, 400, "facets"),
])
async def test_bad_requests(client: TestClient, body: bytes, headers: dict[str, str], status: int,
                            field: str | None) -> None:
    resp = await client.post(QUERY, data=body, headers=headers)
    assert resp.status == status, await resp.text()
    problem = await resp.json()
    assert problem["ok"] is False and problem.get("field") == field


@pytest.mark.parametrize("body", [{"filters": {}}, {"name": "", "filters": {}}, {"name": 3},
                                  {"name": "a\nb"}, {"name": "x" * 300}])
async def test_save_needs_a_name(client: TestClient, body: dict[str, Any]) -> None:
    resp = await client.post("/api/cohorts", json=body)
    assert resp.status == 400 and (await resp.json())["field"] == "name"


async def test_bad_manifest_format(client: TestClient) -> None:
    resp = await client.post("/api/cohorts", json={"name": "all", "filters": {}})
    cid = (await resp.json())["id"]
    resp = await client.get(f"/api/cohorts/{cid}/manifest", params={"format": "xml"})
    assert resp.status == 400 and (await resp.json())["field"] == "format"
    assert (await client.delete(f"/api/cohorts/{cid}")).status == 204


# ---------------------------------------------------------------- small cells

MIN_CELL = 10  # [release] min_cell_count of the small-cell tests (the default)
TOKENS = {role: new_token() for role in ("evaluator", "admin")}  # no token: a guest (anonymous)


def as_role(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


async def commons_client(aiohttp_client, data: DataSet, minimum: int) -> TestClient:
    """A server on the generated archive with guests, evaluators and admins, and
    ``[release] min_cell_count = minimum``."""
    tokens = [{"name": f"{role}-token", "role": role, "sha256": token_hash(t)} for role, t in TOKENS.items()]
    return await aiohttp_client(create_app(make_config(data.root, auth={"tokens": tokens},
                                                       release={"min_cell_count": minimum})))


def small_filter(data: DataSet) -> dict[str, Any]:
    """A filter that selects some studies, fewer than MIN_CELL of fewer than MIN_CELL patients."""
    for s in sorted(data.studies.values(), key=lambda s: s.uid):
        f = {"study_date": {"from": s.date, "to": s.date}}
        if s.date and expected(data, f)[0]["studies"] < MIN_CELL:
            return f
    raise AssertionError("no small cell in the generated data")


async def test_guest_cannot_count_a_small_cohort(aiohttp_client, data: DataSet) -> None:
    """Below [release] min_cell_count a guest learns "<10" and nothing more: no study listed, the
    more flag false at every offset, the manifest and zip refused (403); evaluators and admins
    get the cohort whole."""
    client = await commons_client(aiohttp_client, data, MIN_CELL)
    f = small_filter(data)
    counts, _, chosen = expected(data, f)
    assert 0 < counts["patients"] <= counts["studies"] < MIN_CELL
    hidden = f"<{MIN_CELL}"
    for offset in range(counts["studies"] + 2):  # the more flag, probed at every offset, says nothing
        for limit in (0, 1, N_STUDIES):
            body = await cohort(client, f, limit=limit, offset=offset, facets=False)
            assert body["counts"]["studies"] == body["counts"]["patients"] == hidden
            # sizes would tell the count (images / a one-value images filter = studies)
            assert [body["counts"][k] for k in ("series", "instances", "bytes")] == [None] * 3
            where = (limit, offset)
            assert body["studies"] == [] and body["more"] is False and body["withheld"] is True, where
    resp = await client.post("/api/cohorts", json={"name": "one day", "filters": f})
    assert resp.status == 201
    cid = (await resp.json())["id"]
    got = await (await client.get(f"/api/cohorts/{cid}")).json()
    assert got["counts"]["studies"] == hidden
    assert [got["counts"][k] for k in ("series", "instances", "bytes")] == [None] * 3
    for path in (f"/api/cohorts/{cid}/manifest?format=json", f"/api/cohorts/{cid}/manifest?format=csv",
                 f"/api/cohorts/{cid}/zip"):
        resp = await client.get(path)
        assert resp.status == 403, path
        problem = await resp.json()
        assert problem["ok"] is False and "min_cell_count" in problem["error"], problem

    for role in ("evaluator", "admin"):
        body = await cohort(client, f, as_role(role), limit=N_STUDIES, facets=False)
        assert body["counts"] == counts and body["withheld"] is False
        assert [s["StudyInstanceUID"] for s in body["studies"]] == [s.uid for s in chosen]
        assert (await cohort(client, f, as_role(role), limit=0, facets=False))["more"] is True
        resp = await client.get(f"/api/cohorts/{cid}/manifest", headers=as_role(role))
        assert resp.status == 200
        totals = (await resp.json())["totals"]
        assert (totals["studies"], totals["instances"]) == (counts["studies"], counts["instances"])
        resp = await client.get(f"/api/cohorts/{cid}/zip", headers=as_role(role))
        assert resp.status == 200
        with zipfile.ZipFile(io.BytesIO(await resp.read())) as zf:
            assert len(zf.namelist()) == counts["instances"]

    # Only small cells are withheld: a guest pages through a large cohort and downloads it.
    everything, _, _ = expected(data, {})
    body = await cohort(client, {}, limit=37, offset=37, facets=False)
    assert body["counts"]["studies"] == everything["studies"] >= MIN_CELL
    assert len(body["studies"]) == 37 and body["more"] is True and body["withheld"] is False
    resp = await client.post("/api/cohorts", json={"name": "everything", "filters": {}})
    big = (await resp.json())["id"]
    resp = await client.get(f"/api/cohorts/{big}/manifest")
    assert resp.status == 200 and (await resp.json())["totals"]["studies"] == everything["studies"]
    for saved in (cid, big):
        assert (await client.delete(f"/api/cohorts/{saved}", headers=as_role("admin"))).status == 204


async def test_guest_cannot_count_patients_from_the_list(aiohttp_client, data: DataSet) -> None:
    """Enough studies but too few patients: the PatientIDs of a list would count the patients, so
    a guest gets no list and no manifest; an evaluator gets both."""
    counts, _, chosen = expected(data, {})
    minimum = counts["patients"] + 1
    assert counts["studies"] >= minimum  # studies are shown, patients are "<minimum"
    client = await commons_client(aiohttp_client, data, minimum)
    body = await cohort(client, {}, limit=N_STUDIES, facets=False)
    assert body["counts"]["studies"] == counts["studies"] and body["counts"]["patients"] == f"<{minimum}"
    assert body["studies"] == [] and body["more"] is False and body["withheld"] is True
    resp = await client.post("/api/cohorts", json={"name": "everything", "filters": {}})
    cid = (await resp.json())["id"]
    for fmt in ("json", "csv"):
        assert (await client.get(f"/api/cohorts/{cid}/manifest", params={"format": fmt})).status == 403
    assert (await client.get(f"/api/cohorts/{cid}/zip")).status == 403
    assert [body["counts"][k] for k in ("series", "instances", "bytes")] == [None] * 3

    body = await cohort(client, {}, as_role("evaluator"), limit=N_STUDIES, facets=False)
    assert body["counts"] == counts and body["withheld"] is False
    assert len({s["PatientID"] for s in body["studies"]}) == counts["patients"] == len({s.patient_id
                                                                                      for s in chosen})
    resp = await client.get(f"/api/cohorts/{cid}/manifest", params={"format": "csv"},
                            headers=as_role("evaluator"))
    assert resp.status == 200
    assert len({r["PatientID"] for r in csv.DictReader(io.StringIO(await resp.text()))}) == counts["patients"]
    assert (await client.delete(f"/api/cohorts/{cid}", headers=as_role("admin"))).status == 204


def test_docs_name_every_filter_and_facet() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name in (*NAMES, *FACETS):
        assert f"`{name}`" in text, name


# ---------------------------------------------------------------- command line

def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="imaging-archive")
    cohort_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture
def config_file(data: DataSet) -> Iterator[Path]:
    path = data.root / "cli.toml"
    path.write_text('[database]\nurl = "sqlite+aiosqlite:///index.db"\n[storage]\npath = "files"\n'
                    '[http]\nbase_url = "http://archive.example/dicom-web"\n', encoding="utf-8")
    yield path


@pytest.mark.databases("sqlite")  # its config file names the SQLite index
def test_cli_query_save_list(data: DataSet, config_file: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    filters = {"modality": ["CT"], "covid19_positive": "Yes"}
    counts, facets, chosen = expected(data, filters)
    out_csv, out_json = tmp_path / "m.csv", tmp_path / "m.json"
    assert run_cli("cohort", "query", "--config", str(config_file), "--filters", json.dumps(filters),
                   "--facets", "--json", "--manifest", str(out_csv)) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"] == counts and got_facets(printed) == facets
    table = list(csv.DictReader(out_csv.open(encoding="utf-8")))
    assert {(r["StudyInstanceUID"], r["SeriesInstanceUID"]) for r in table} == \
        {(s.uid, x.uid) for s in chosen for x in s.series}
    assert all(r["series_url"].startswith("http://archive.example/dicom-web/studies/") for r in table)

    (tmp_path / "f.json").write_text(json.dumps(filters), encoding="utf-8")
    assert run_cli("cohort", "query", "--config", str(config_file),
                   "--filters-file", str(tmp_path / "f.json"), "--manifest", str(out_json)) == 0
    assert f"studies: {counts['studies']}\n" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["totals"]["series"] == len(table)

    assert run_cli("cohort", "save", "CT positive", "--config", str(config_file),
                   "--filters", json.dumps(filters)) == 0
    cid = capsys.readouterr().out.strip()
    assert run_cli("cohort", "list", "--config", str(config_file), "--json") == 0
    listed = {c["id"]: c for c in json.loads(capsys.readouterr().out)}
    assert listed[cid]["name"] == "CT positive" and listed[cid]["filters"]["covid19_positive"] == ["Yes"]
    assert run_cli("cohort", "query", "--config", str(config_file), "--cohort", cid, "--json") == 0
    assert json.loads(capsys.readouterr().out)["counts"] == counts

    assert run_cli("cohort", "query", "--config", str(config_file), "--filters", '{"sex": "x"}') == 2
    assert "filter sex:" in capsys.readouterr().err
    assert run_cli("cohort", "query", "--config", str(config_file), "--filters", "{") == 2
    assert run_cli("cohort", "query", "--config", str(config_file),
                   "--manifest", str(tmp_path / "m.xml")) == 2
    assert run_cli("cohort", "query", "--config", str(config_file), "--cohort", "0" * 32) == 2
