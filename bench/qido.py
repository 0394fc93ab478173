"""QIDO-RS latency at index scale: a mixed, shuffled query set, each answer checked against the catalog.

Query kinds (PS3.18 10.6 parameters):
  patient_id       /studies?PatientID=PID0000123
  patient_name     /studies?PatientName=DOE*                (prefix wildcard; DOE* also hits DOERR)
  study_date       /studies?StudyDate=20170301-20170331&includefield=StudyDescription  (one month)
  modality         /studies?ModalitiesInStudy=CT&limit=100
  description      /studies?StudyDescription=*CHEST PA*&limit=100   (wildcard with spaces)
  study_series     /studies/{study}/series
  series_instances /studies/{study}/series/{series}/instances
  paging           /studies?limit=50&offset=K

Broad matches (modality, description) carry ``limit=100`` as a client would; the number of results
each kind returned on average is printed beside its latency. The values are drawn from the catalog
so every query matches something, and the expected result count is computed from the catalog.
Queries run one at a time over one keep-alive connection; the latency is request sent to last byte.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import httpclient
from datasets import DESCRIPTIONS, StudyRecord
from yarl import URL

KINDS = ("patient_id", "patient_name", "study_date", "modality", "description", "study_series",
         "series_instances", "paging")
BROAD_LIMIT = 100
PAGE = 50
DESCRIPTION_PATTERNS = ("*CHEST PA*", "*W/O CONTRAST*", "*2 VIEWS*", "*ABDOMEN COMPLETE*", "*BRAIN W*",
                        "*LUMBAR SPINE*")
STUDY_DESCRIPTION = "00081030"

Check = Callable[[list[dict]], str | None]


@dataclass
class Query:
    kind: str
    path: str
    expected: int
    check: Check | None = None


@dataclass
class Failure:
    kind: str
    path: str
    status: int
    detail: str


@dataclass
class QidoResult:
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, list[int]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    empty: int = 0  # 204 answers


def _qs(**params: str | int) -> str:
    return "&".join(f"{k}={quote(str(v), safe='*^-')}" for k, v in params.items())


def _every(key: str, test: Callable[[object], bool], what: str) -> Check:
    def check(objs: list[dict]) -> str | None:
        for obj in objs:
            values = obj.get(key, {}).get("Value", [None])
            if not test(values[0]):
                return f"result lacks {what}: {json.dumps(obj)[:300]}"
        return None
    return check


def _patient_id(rng: random.Random, tiny: list[StudyRecord], all_: list[StudyRecord]) -> Query:
    pid = rng.choice(tiny).patient_id
    return Query("patient_id", f"/studies?{_qs(PatientID=pid)}", sum(s.patient_id == pid for s in all_),
                 _every("00100020", lambda v: v == pid, f"PatientID {pid}"))


def _patient_name(rng: random.Random, tiny: list[StudyRecord], all_: list[StudyRecord]) -> Query:
    family = rng.choice(tiny).patient_name.split("^")[0]
    return Query("patient_name", f"/studies?{_qs(PatientName=family + '*')}",
                 sum(s.patient_name.startswith(family) for s in all_))


def _study_date(rng: random.Random, tiny: list[StudyRecord], all_: list[StudyRecord]) -> Query:
    month = rng.choice(tiny).date[:6]
    last_day = calendar.monthrange(int(month[:4]), int(month[4:]))[1]
    lo, hi = month + "01", f"{month}{last_day:02d}"
    return Query("study_date", f"/studies?{_qs(StudyDate=f'{lo}-{hi}', includefield='StudyDescription')}",
                 sum(lo <= s.date <= hi for s in all_),
                 _every(STUDY_DESCRIPTION, lambda v: isinstance(v, str), "StudyDescription (includefield)"))


def _modality(rng: random.Random, tiny: list[StudyRecord], all_: list[StudyRecord]) -> Query:
    modality = rng.choice(sorted(DESCRIPTIONS))
    matches = sum(modality in s.modalities for s in all_)
    return Query("modality", f"/studies?{_qs(ModalitiesInStudy=modality, limit=BROAD_LIMIT)}",
                 min(BROAD_LIMIT, matches))


def _description(rng: random.Random, tiny: list[StudyRecord], all_: list[StudyRecord]) -> Query:
    usable = [p for p in DESCRIPTION_PATTERNS if any(p.strip("*") in s.description for s in tiny)]
    pattern = rng.choice(usable)
    matches = sum(pattern.strip("*") in s.description for s in all_)
    return Query("description", f"/studies?{_qs(StudyDescription=pattern, limit=BROAD_LIMIT)}",
                 min(BROAD_LIMIT, matches))


def _study_series(rng: random.Random, tiny: list[StudyRecord], all_: list[StudyRecord]) -> Query:
    study = rng.choice(tiny)
    return Query("study_series", f"/studies/{study.uid}/series", len(study.series))


def _series_instances(rng: random.Random, tiny: list[StudyRecord], all_: list[StudyRecord]) -> Query:
    study = rng.choice(tiny)
    series = rng.choice(study.series)
    return Query("series_instances", f"/studies/{study.uid}/series/{series.uid}/instances",
                 series.instances)


def _paging(rng: random.Random, tiny: list[StudyRecord], all_: list[StudyRecord]) -> Query:
    offset = rng.randint(0, max(0, len(all_) - PAGE))
    return Query("paging", f"/studies?{_qs(limit=PAGE, offset=offset)}", min(PAGE, len(all_) - offset))


_BUILDERS = {"patient_id": _patient_id, "patient_name": _patient_name, "study_date": _study_date,
             "modality": _modality, "description": _description, "study_series": _study_series,
             "series_instances": _series_instances, "paging": _paging}


def build_queries(tiny: list[StudyRecord], all_studies: list[StudyRecord], per_kind: int,
                  seed: int = 11) -> list[Query]:
    """``per_kind`` queries of every kind, shuffled."""
    rng = random.Random(seed)
    queries = [_BUILDERS[kind](rng, tiny, all_studies) for kind in KINDS for _ in range(per_kind)]
    rng.shuffle(queries)
    return queries


def _judge(query: Query, status: int, body: bytes) -> tuple[int, str | None]:
    """(result count, problem or None) for one answer."""
    if status == 204:
        return 0, None if query.expected == 0 else f"204 but {query.expected} expected"
    if status != 200:
        return 0, body[:300].decode("utf-8", "replace")
    try:
        objs = json.loads(body)
    except ValueError:
        return 0, f"body is not JSON: {body[:200]!r}"
    if not isinstance(objs, list):
        return 0, f"body is not a JSON array: {body[:200]!r}"
    if len(objs) != query.expected:
        return len(objs), f"{len(objs)} results, {query.expected} expected"
    return len(objs), query.check(objs) if query.check else None


async def run_queries(base_url: str, queries: list[Query], warmup: int = 10) -> QidoResult:
    result = QidoResult()
    async with httpclient.session(1) as http:
        for query in queries[:warmup]:
            await httpclient.timed_get(http, URL(base_url + query.path, encoded=True))
        for query in queries:
            status, seconds, body = await httpclient.timed_get(http, URL(base_url + query.path, encoded=True))
            count, problem = _judge(query, status, body)
            result.empty += status == 204
            result.latencies_ms.setdefault(query.kind, []).append(seconds * 1000)
            result.results.setdefault(query.kind, []).append(count)
            if problem is not None:
                result.failures.append(Failure(query.kind, query.path, status, problem))
    return result


def measure(base_url: str, tiny: list[StudyRecord], all_studies: list[StudyRecord], per_kind: int
            ) -> QidoResult:
    return asyncio.run(run_queries(base_url, build_queries(tiny, all_studies, per_kind)))
