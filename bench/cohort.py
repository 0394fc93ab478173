"""Cohort query latency on an index of 100,000 studies with MIDRC clinical data (SQLite).

    python bench/cohort.py [--studies 100000] [--runs 50] [--workdir DIR] [--keep]

Fills a new index in a temporary folder with bulk INSERTs of the archive's own tables (the
columns ingest writes; no DICOM files: the query reads the index only): patients, one study each
with one or two series of one instance, harmonized codes from placing descriptions drawn from
MIDRC's gen3 distribution (a built-in list without ../shared), and a MIDRC case for 90 % of the
patients with the proportions of tests/clinical_data.py. Then runs what ``POST
/api/cohorts/query`` runs (:func:`archive.cohorts.query.run_query`: counts, the ten facets and a
page of 100 studies) for a 5-filter cohort ``--runs`` times, and prints p50/p95 beside the target
(p95 < 200 ms), the counts, and the index size. Also timed, for scale: the same query without
facets, and the whole archive (no filter) with facets. Each answer is checked against counts
computed from the generated rows; a mismatch is printed under "problems" and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import insert

from archive.cohorts.filters import parse_filters
from archive.cohorts.query import run_query
from archive.harmonize import Harmonizer
from archive.index.db import create_engine, init_schema
from archive.index.schema import cases, instances, patients, series, studies

REFERENCE = Path(__file__).resolve().parents[2] / "shared/reference/midrc-harmonization"
GEN3 = REFERENCE / "study_descriptions_gen3.tsv"
FALLBACK = [("DX", "XR CHEST 1 VIEW AP", 20540), ("CR", "XR PORT CHEST 1V", 15011),
            ("CT", "CT CHEST WITHOUT CONTRAST", 5000), ("CT", "CT ABDOMEN PELVIS W CONTRAST", 3000),
            ("MR", "MRI BRAIN W WO CONTRAST", 800)]
FILTERS = {"modality": ["CT", "DX"], "covid19_positive": "Yes", "age": {"min": 50, "max": 64},
           "sex": "Female", "study_date": {"from": "20200101", "to": "20211231"}}
TARGET_P95_MS = 200.0
SEX = (("Female", 50), ("Male", 48), ("Not Reported", 2))
RACE = (("White", 58), ("Black or African American", 22), ("Asian", 7), ("Other", 5), ("Not Reported", 6),
        ("American Indian or Alaska Native", 1), ("Native Hawaiian or other Pacific Islander", 1))
ETHNICITY = (("Not Hispanic or Latino", 80), ("Hispanic or Latino", 12), ("Not Reported", 8))
COVID = (("Yes", 38), ("No", 52), ("Indeterminate", 2), ("Not Reported", 8))
VENDORS = ("GE MEDICAL SYSTEMS", "SIEMENS", "Philips Medical Systems", "FUJIFILM Corporation",
           "Carestream Health")
UID = "1.2.826.0.1.3680043.8.498"
_ROWS_PER_INSERT = 5_000


def _pick(rng: random.Random, choices: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([c for c, _ in choices], [w for _, w in choices])[0]


def _descriptions() -> list[tuple[str, str, int]]:
    if not GEN3.is_file():
        return FALLBACK
    with GEN3.open(encoding="utf-8") as f:
        return [(r["Modality"].replace(" ", ""), r["StudyDescription"], int(r["frequency"]))
                for r in csv.DictReader(f, delimiter="\t")
                if r["Modality"].replace(" ", "") in ("CT", "CR", "DX", "MR", "US", "CT,PT", "NM")]


@dataclass
class Truth:
    """What the 5-filter cohort must count, from the generated rows."""

    studies: int = 0
    patients: set[int] = field(default_factory=set)
    instances: int = 0


def _fill(db: Path, n_studies: int, seed: int, analyze: bool) -> Truth:
    """Bulk INSERTs in one transaction per table (synchronous: it is set-up, not measured)."""
    rng = random.Random(seed)
    draws = _descriptions()
    harmonizer = Harmonizer.load()
    n_patients = int(n_studies * 0.6)
    patient_rows, case_rows, case_of = [], [], {}
    for p in range(1, n_patients + 1):
        pid = f"BENCH-{p:07d}"
        patient_rows.append({"pk": p, "patient_id": pid, "issuer_of_patient_id": "",
                             "patient_name": f"Bench^{p}", "patient_name_norm": f"BENCH^{p}"})
        if rng.random() < 0.9:
            true_age = None if rng.random() < 0.03 else max(0, min(104, round(rng.gauss(60, 18))))
            icu = None if rng.random() < 0.1 else rng.random() < 0.1
            row = {"submitter_id": pid, "project_id": "Open-B1",
                   "age_at_index": true_age if true_age is not None and true_age <= 89 else None,
                   "age_at_index_gt89": "Yes" if true_age is not None and true_age > 89 else "No",
                   "sex": _pick(rng, SEX), "race": _pick(rng, RACE), "ethnicity": _pick(rng, ETHNICITY),
                   "covid19_positive": _pick(rng, COVID), "icu_indicator": icu,
                   "ventilator_indicator": None if icu is None else icu and rng.random() < 0.45,
                   "site": str(rng.randint(1, 8))}
            case_rows.append(row)
            case_of[p] = row
    descs = rng.choices(draws, [w for *_, w in draws], k=n_studies)
    study_rows, series_rows, instance_rows = [], [], []
    truth = Truth()
    meta = zlib.compress(b"{}")
    series_pk = 0
    for s in range(1, n_studies + 1):
        patient = s if s <= n_patients else rng.randint(1, n_patients)
        family, description, _ = descs[s - 1]
        modalities = family.split(",")
        date = f"{rng.randint(2018, 2023)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        placed = harmonizer.place(modalities, description, "", len(modalities))
        proc = placed.procedure
        study_rows.append({
            "pk": s, "patient_pk": patient, "study_uid": f"{UID}.1.{s}",
            "study_date": date, "study_time": "120000", "study_description": description,
            "modalities": "\\".join(sorted(set(modalities))), "num_series": len(modalities),
            "num_instances": len(modalities), "size": 2048 * len(modalities),
            "loinc_code": proc.code if proc else None, "loinc_name": proc.name if proc else None,
            "loinc_system": proc.system if proc else None, "loinc_region": proc.region if proc else None,
            "harmonize_how": placed.how})
        vendor = rng.choice(VENDORS)
        for modality in modalities:
            series_pk += 1
            series_rows.append({"pk": series_pk, "study_pk": s, "series_uid": f"{UID}.2.{series_pk}",
                                "modality": modality, "series_number": 1, "manufacturer": vendor,
                                "institution_name": f"Site {vendor[:3]}", "num_instances": 1})
            instance_rows.append({"pk": series_pk, "series_pk": series_pk, "sop_uid": f"{UID}.3.{series_pk}",
                                  "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "instance_number": 1,
                                  "transfer_syntax_uid": "1.2.840.10008.1.2.1", "size": 2048,
                                  "sha256": "0" * 64, "storage_key": f"bench/{series_pk}", "meta_json": meta,
                                  "bulk": "{}"})
        case = case_of.get(patient)
        age = None if case is None else (90 if case["age_at_index_gt89"] == "Yes" else case["age_at_index"])
        if (case is not None and set(modalities) & {"CT", "DX"} and case["covid19_positive"] == "Yes"
                and age is not None and 50 <= age <= 64 and case["sex"] == "Female"
                and "20200101" <= date <= "20211231"):
            truth.studies += 1
            truth.patients.add(patient)
            truth.instances += len(modalities)
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        for table, rows in ((patients, patient_rows), (cases, case_rows), (studies, study_rows),
                            (series, series_rows), (instances, instance_rows)):
            for i in range(0, len(rows), _ROWS_PER_INSERT):
                conn.execute(insert(table), rows[i:i + _ROWS_PER_INSERT])
    if analyze:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    engine.dispose()
    return truth


async def _timed(runs: int, work: Callable[[], Any]) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = await work()
        times.append((time.perf_counter() - start) * 1000)
    return times, result


def _pct(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _measure(db: Path, runs: int, truth: Truth) -> list[str]:
    problems: list[str] = []
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    base = "http://127.0.0.1:8080/dicom-web"
    filters = parse_filters(FILTERS)
    everything = parse_filters({})
    try:
        await run_query(engine, filters, base)  # warm: connection, page cache
        cases_ = [("5 filters, counts + facets + page of 100",
                   lambda: run_query(engine, filters, base), runs),
                  ("5 filters, counts + page (no facets)",
                   lambda: run_query(engine, filters, base, facets=False), runs),
                  ("no filter (every study), counts + facets + page",
                   lambda: run_query(engine, everything, base), max(3, runs // 10))]
        for label, work, n in cases_:
            times, result = await _timed(n, work)
            c = result.counts
            print(f"{label:<50} p50 {_pct(times, 0.5):7.1f} ms  p95 {_pct(times, 0.95):7.1f} ms  ({n} runs)")
            print(f"{'':<50} patients {c.patients:,}  studies {c.studies:,}  series {c.series:,}  "
                  f"instances {c.instances:,}  bytes {c.bytes:,}")
            if label.startswith("5 filters"):
                got = (c.studies, c.patients, c.instances)
                want = (truth.studies, len(truth.patients), truth.instances)
                if got != want:
                    problems.append(f"{label}: counts {got} != generated {want}")
                p95 = _pct(times, 0.95)
                if label.endswith("page of 100") and p95 >= TARGET_P95_MS:
                    problems.append(f"p95 {p95:.1f} ms is above the target of {TARGET_P95_MS:g} ms")
    finally:
        await engine.dispose()
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", help="folder for the index (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the index afterwards")
    parser.add_argument("--analyze", action="store_true",
                        help="run ANALYZE after filling (the archive itself never does: off by default)")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cohort-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "index.db"
    if db.exists():
        db.unlink()
    try:
        engine = create_engine(f"sqlite+aiosqlite:///{db}")
        asyncio.run(_init(engine))
        start = time.perf_counter()
        truth = _fill(db, args.studies, args.seed, args.analyze)
        size = sum(p.stat().st_size for p in work.glob("index.db*"))
        print(f"filled {args.studies:,} studies in {time.perf_counter() - start:.1f} s; "
              f"index {size / 1e6:.1f} MB ({db}); filters: {FILTERS}")
        problems = asyncio.run(_measure(db, args.runs, truth))
        print(f"target: p95 < {TARGET_P95_MS:g} ms for the 5-filter query with facets")
        for p in problems:
            print(f"problem: {p}")
        return 1 if problems else 0
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


async def _init(engine: Any) -> None:
    await init_schema(engine)
    await engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
