"""Bounded load test of the archive server (issue 5): N concurrent DICOMweb clients for a fixed time.

    python bench/load.py --quick                 # 20 clients, 20 s (~1 min with set-up)
    python bench/load.py                         # 50 clients, 120 s
    python bench/load.py --clients 50 --seconds 120 --json bench/out/load.json

Everything runs over 127.0.0.1. Steps:
 1. data (cached under ``<workdir>/cache``, see ``datasets.py``): a few CT studies (2 studies x 1
    series x 50 slices of 512x512 16-bit, plus a 200-slice series) and a few thousand tiny
    instances (2,000 with ``--quick``, 5,000 otherwise) over many patients, studies and series;
 2. the server (``servers.Archive``: ``python -m archive serve`` on a fresh data dir, DIMSE off),
    preloaded by STOW-RS (not timed);
 3. the load: ``--clients`` clients, each with its own keep-alive connection (its own aiohttp
    session), spread over ``--client-processes`` processes (the client side needs CPU too), all
    starting at the same instant and looping until ``--seconds`` have passed over a weighted mix
    (``MIX``):
      stow             STOW-RS of 1-10 new tiny instances, fresh UIDs every time (real stores): a new
                       study, or a new series in a study this client stored before; patient
                       ``LOAD^Cnn`` / ID ``LOAD-Cnn``, date 19000101, so the preloaded catalog's
                       query answers stay exact
      qido_name        /studies?PatientName=FAMILY*            (study UIDs compared with the catalog)
      qido_date        /studies?StudyDate=A-B  (1-12 months)   (study UIDs compared with the catalog)
      qido_series      /studies/{study}/series                 (series UIDs compared)
      qido_instances   /studies/{study}/series/{series}/instances  (count compared)
      qido_own         instances of a series this client stored by STOW-RS (count: read-your-writes)
      wado_instance    instance retrieve, CT or tiny, transfer-syntax=*  (one part, size)
      wado_series      series retrieve of a small (tiny, 1-15 instances) series  (parts counted)
      metadata         /metadata of a tiny or a CT series      (object count, SOP Instance UIDs)
      frame            /frames/1 of a CT slice, octet-stream, transfer-syntax=*  (>= 512x512x2 bytes)
      rendered         /rendered of a CT slice, image/jpeg     (JPEG signature)
      thumbnail        /thumbnail of a CT study or series, image/jpeg
    Every answer is checked; every failure is kept (operation, URL, status, body).
    Latency = request sent to last byte read, on the client.
 4. the server's memory: RSS and PSS summed over it and its children, every 100 ms (``procs.py``),
    kept as a time series: value at the start of the load, peak, end, and growth; "flat" compares the
    mean of the last window (20 s, or a quarter of a shorter run) with the mean of the window after
    the warm-up (20-40 s); growth above 10 % and 10 MB is flagged as a problem;
 5. after the load: every acknowledged STOW-RS study is counted back by QIDO-RS
    (``NumberOfStudyRelatedInstances`` must equal what was acknowledged) and the server log is
    scanned for tracebacks and ERROR lines.

Problems (errors, wrong answers, lost instances, memory growth, server log errors, a server that
died) are listed at the end; the exit code is 1 when there is any. The box is shared with the
client: the 1-minute load average and the CPU used by the server and the clients are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import concurrent.futures
import json
import multiprocessing
import os
import random
import re
import shutil
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import datasets
import httpclient
import numpy as np
import psutil
import requests
from procs import MemorySampler, ProcessError
from servers import Archive
from yarl import URL

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OCTET_ANY = "multipart/related; type=application/octet-stream; transfer-syntax=*"
JSON = "application/dicom+json"
LOAD_DATE = "19000101"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
MIX: dict[str, int] = {  # relative weights
    "stow": 14, "qido_name": 9, "qido_date": 9, "qido_series": 7, "qido_instances": 7, "qido_own": 4,
    "wado_instance": 10, "wado_series": 8, "metadata": 10, "frame": 10, "rendered": 7, "thumbnail": 5,
}
CT_FRAME_BYTES = 512 * 512 * 2


# ------------------------------------------------------------------------------------------ memory


class SeriesSampler(MemorySampler):
    """``MemorySampler`` that also keeps every sample: (monotonic time, RSS sum, PSS sum)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(pid, interval)
        self.series: list[tuple[float, int, int]] = []
        self._acc = [0, 0]

    def _measure(self, proc: psutil.Process) -> tuple[int, int]:
        rss, pss = super()._measure(proc)
        self._acc[0] += rss
        self._acc[1] += pss
        return rss, pss

    def _sample(self) -> None:
        self._acc = [0, 0]
        before = self.samples
        super()._sample()
        if self.samples > before:
            self.series.append((time.monotonic(), self._acc[0], self._acc[1]))


# ------------------------------------------------------------------------------------------ catalog


@dataclass
class Catalog:
    """What the clients may ask for, and the expected answers (picklable, sent to each process)."""

    base: str
    studies: list[datasets.StudyRecord]          # every preloaded study, tiny and CT
    tiny: list[datasets.StudyRecord]
    ct: list[datasets.StudyRecord]
    families: list[str]
    months: list[str]                             # YYYYMM present in the tiny set


def tiny_sops(series_uid: str, n: int) -> list[str]:
    return [datasets.make_uid("tiny-sop", series_uid, k) for k in range(n)]


def ct_sops(series_uid: str, n: int) -> list[str]:
    return [datasets.make_uid("ct-sop", series_uid, k) for k in range(n)]


# ------------------------------------------------------------------------------------------ clients


@dataclass
class Failure:
    op: str
    path: str
    status: int
    detail: str


@dataclass
class ClientOutcome:
    samples: list[tuple[str, float, float, bool]] = field(default_factory=list)  # op, t (wall), ms, ok
    failures: list[Failure] = field(default_factory=list)
    stored: dict[str, int] = field(default_factory=dict)  # study UID -> acknowledged instances
    uncertain: set[str] = field(default_factory=set)      # studies with a failed STOW-RS
    patient_ids: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0


def _uids(objs: list[dict], tag: str) -> set[str]:
    return {o.get(tag, {}).get("Value", [None])[0] for o in objs}


def _json_list(body: bytes) -> list[dict] | str:
    if not body:
        return []
    try:
        objs = json.loads(body)
    except ValueError:
        return f"body is not JSON: {body[:200]!r}"
    return objs if isinstance(objs, list) else f"body is not a JSON array: {body[:200]!r}"


def _parts(content_type: str, body: bytes) -> int:
    boundary = httpclient.boundary_of(content_type)
    return max(0, body.count(f"--{boundary}".encode()) - 1) if boundary else -1


class Client:
    def __init__(self, number: int, cat: Catalog, seed: int, out: ClientOutcome) -> None:
        self.n, self.cat, self.out = number, cat, out
        self.rng = random.Random(seed * 1000 + number)
        self.pid, self.name = f"LOAD-C{number:02d}", f"LOAD^C{number:02d}"
        self.own_series: list[tuple[str, str, int]] = []  # study, series, instances
        self.own_studies: list[str] = []
        self.ops, self.weights = list(MIX), list(MIX.values())
        self.pixels = datasets._tiny_pixels()

    async def run(self, http: aiohttp.ClientSession, start_at: float, end_at: float) -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        while time.time() < end_at:
            op = self.rng.choices(self.ops, self.weights)[0]
            if op == "qido_own" and not self.own_series:
                op = "stow"
            await self.one(http, op)

    async def one(self, http: aiohttp.ClientSession, op: str) -> None:
        started_wall, started = time.time(), time.perf_counter()
        path, status, detail = "", 0, None
        try:
            path, status, detail = await getattr(self, op)(http)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
        ms = (time.perf_counter() - started) * 1000
        self.out.samples.append((op, started_wall, ms, detail is None))
        if detail is not None:
            self.out.failures.append(Failure(op, path, status, detail[:400]))

    async def _get(self, http: aiohttp.ClientSession, path: str, accept: str) -> tuple[int, str, bytes]:
        async with http.get(URL(self.cat.base + path, encoded=True), headers={"Accept": accept}) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.read()

    # -- STOW-RS

    async def stow(self, http: aiohttp.ClientSession) -> tuple[str, int, str | None]:
        n = self.rng.randint(1, 10)
        if self.own_studies and self.rng.random() < 0.3:
            study_uid = self.rng.choice(self.own_studies)
        else:
            study_uid = f"2.25.{uuid.uuid4().int}"
        modality = self.rng.choice(list(datasets.SOP_CLASSES))
        series = datasets.SeriesRecord(f"2.25.{uuid.uuid4().int}", modality, n)
        study = datasets.StudyRecord(study_uid, self.pid, self.name, LOAD_DATE, "LOAD TEST")
        parts = [datasets._tiny_instance(study, self.n, 1, series, k, self.pixels) for k in range(n)]
        boundary = f"load-{uuid.uuid4().hex}"
        body = httpclient.multipart_body(parts, boundary)
        headers = {"Content-Type": f"{httpclient.MULTIPART_DICOM}; boundary={boundary}", "Accept": JSON}
        async with http.post(self.cat.base + "/studies", data=body, headers=headers) as r:
            status, reply = r.status, await r.read()
        problem = httpclient._check_stow_reply(status, reply, n)
        if problem is None:
            if study_uid not in self.out.stored:
                self.own_studies.append(study_uid)
            self.out.stored[study_uid] = self.out.stored.get(study_uid, 0) + n
            self.own_series.append((study_uid, series.uid, n))
        else:
            self.out.uncertain.add(study_uid)
            self.out.stored.setdefault(study_uid, 0)
        return f"/studies ({n} instances)", status, problem

    # -- QIDO-RS

    async def _studies_query(self, http: aiohttp.ClientSession, query: str, expected: set[str]
                             ) -> tuple[str, int, str | None]:
        path = "/studies?" + query
        status, _, body = await self._get(http, path, JSON)
        if status not in (200, 204):
            return path, status, body[:300].decode("utf-8", "replace")
        objs = _json_list(body)
        if isinstance(objs, str):
            return path, status, objs
        got = _uids(objs, "0020000D")
        if got != expected:
            return path, status, (f"{len(got)} studies, {len(expected)} expected "
                                  f"({len(got - expected)} unexpected, {len(expected - got)} missing)")
        return path, status, None

    async def qido_name(self, http: aiohttp.ClientSession) -> tuple[str, int, str | None]:
        family = self.rng.choice(self.cat.families)
        expected = {s.uid for s in self.cat.studies if s.patient_name.startswith(family)}
        return await self._studies_query(http, f"PatientName={quote(family)}*", expected)

    async def qido_date(self, http: aiohttp.ClientSession) -> tuple[str, int, str | None]:
        first = self.rng.choice(self.cat.months)
        months = self.rng.randint(1, 12)
        y, m = int(first[:4]), int(first[4:]) + months - 1
        last_month = f"{y + (m - 1) // 12}{(m - 1) % 12 + 1:02d}"
        last_day = calendar.monthrange(int(last_month[:4]), int(last_month[4:]))[1]
        lo, hi = first + "01", f"{last_month}{last_day:02d}"
        expected = {s.uid for s in self.cat.studies if lo <= s.date <= hi}
        return await self._studies_query(http, f"StudyDate={lo}-{hi}&includefield=StudyDescription", expected)

    async def qido_series(self, http: aiohttp.ClientSession) -> tuple[str, int, str | None]:
        study = self.rng.choice(self.cat.studies)
        path = f"/studies/{study.uid}/series"
        status, _, body = await self._get(http, path, JSON)
        if status != 200:
            return path, status, body[:300].decode("utf-8", "replace")
        objs = _json_list(body)
        if isinstance(objs, str):
            return path, status, objs
        if _uids(objs, "0020000E") != {s.uid for s in study.series}:
            return path, status, f"{len(objs)} series, {len(study.series)} expected (or other UIDs)"
        return path, status, None

    async def _count_instances(self, http: aiohttp.ClientSession, study: str, series: str, expected: int
                               ) -> tuple[str, int, str | None]:
        path = f"/studies/{study}/series/{series}/instances"
        status, _, body = await self._get(http, path, JSON)
        if status != 200:
            return path, status, body[:300].decode("utf-8", "replace")
        objs = _json_list(body)
        if isinstance(objs, str):
            return path, status, objs
        if len(objs) != expected:
            return path, status, f"{len(objs)} instances, {expected} expected"
        return path, status, None

    async def qido_instances(self, http: aiohttp.ClientSession) -> tuple[str, int, str | None]:
        study = self.rng.choice(self.cat.tiny)
        series = self.rng.choice(study.series)
        return await self._count_instances(http, study.uid, series.uid, series.instances)

    async def qido_own(self, http: aiohttp.ClientSession) -> tuple[str, int, str | None]:
        study, series, n = self.rng.choice(self.own_series)
        return await self._count_instances(http, study, series, n)

    # -- WADO-RS

    def _pick_instance(self) -> tuple[str, str, str, bool]:
        """(study, series, SOP, is CT)"""
        if self.rng.random() < 0.5:
            study = self.rng.choice(self.cat.ct)
            series = self.rng.choice(study.series)
            return study.uid, series.uid, ct_sops(series.uid, series.instances)[
                self.rng.randrange(series.instances)], True
        study = self.rng.choice(self.cat.tiny)
        series = self.rng.choice(study.series)
        return study.uid, series.uid, tiny_sops(series.uid, series.instances)[
            self.rng.randrange(series.instances)], False

    def _ct_slice(self) -> tuple[str, str, str]:
        study = self.rng.choice(self.cat.ct)
        series = self.rng.choice(study.series)
        k = self.rng.randrange(series.instances)
        return study.uid, series.uid, datasets.make_uid("ct-sop", series.uid, k)

    async def wado_instance(self, http: aiohttp.ClientSession) -> tuple[str, int, str | None]:
        study, series, sop, is_ct = self._pick_instance()
        path = f"/studies/{study}/series/{series}/instances/{sop}"
        status, ctype, body = await self._get(http, path, DICOM_ANY)
        if status != 200:
            return path, status, body[:300].decode("utf-8", "replace")
        parts, least = _parts(ctype, body), (CT_FRAME_BYTES if is_ct else 128)
        if parts != 1 or len(body) < least or sop.encode() not in body:
            return path, status, f"{parts} parts, {len(body)} bytes ({ctype}); 1 part with the SOP expected"
        return path, status, None

    async def wado_series(self, http: aiohttp.ClientSession) -> tuple[str, int, str | None]:
        study = self.rng.choice(self.cat.tiny)
        series = self.rng.choice(study.series)
        path = f"/studies/{study.uid}/series/{series.uid}"
        status, ctype, body = await self._get(http, path, DICOM_ANY)
        if status != 200:
            return path, status, body[:300].decode("utf-8", "replace")
        parts = _parts(ctype, body)
        if parts != series.instances:
            return path, status, f"{parts} parts ({ctype}), {series.instances} expected"
        return path, status, None

    async def metadata(self, http: aiohttp.ClientSession) -> tuple[str, int, str | None]:
        pool = self.cat.ct if self.rng.random() < 0.3 else self.cat.tiny
        study = self.rng.choice(pool)
        series = self.rng.choice(study.series)
        path = f"/studies/{study.uid}/series/{series.uid}/metadata"
        status, _, body = await self._get(http, path, JSON)
        if status != 200:
            return path, status, body[:300].decode("utf-8", "replace")
        objs = _json_list(body)
        if isinstance(objs, str):
            return path, status, objs
        sops = ct_sops if pool is self.cat.ct else tiny_sops
        if _uids(objs, "00080018") != set(sops(series.uid, series.instances)):
            return path, status, f"{len(objs)} objects, {series.instances} expected (or other SOP UIDs)"
        return path, status, None

    async def frame(self, http: aiohttp.ClientSession) -> tuple[str, int, str | None]:
        study, series, sop = self._ct_slice()
        path = f"/studies/{study}/series/{series}/instances/{sop}/frames/1"
        status, ctype, body = await self._get(http, path, OCTET_ANY)
        if status != 200:
            return path, status, body[:300].decode("utf-8", "replace")
        if _parts(ctype, body) != 1 or len(body) < CT_FRAME_BYTES:
            return path, status, f"{_parts(ctype, body)} parts, {len(body)} bytes ({ctype})"
        return path, status, None

    async def _jpeg(self, http: aiohttp.ClientSession, path: str) -> tuple[str, int, str | None]:
        status, ctype, body = await self._get(http, path, "image/jpeg")
        if status != 200:
            return path, status, body[:300].decode("utf-8", "replace")
        if not body.startswith(b"\xff\xd8") or not ctype.startswith("image/jpeg"):
            return path, status, f"not a JPEG ({ctype}, {len(body)} bytes)"
        return path, status, None

    async def rendered(self, http: aiohttp.ClientSession) -> tuple[str, int, str | None]:
        study, series, sop = self._ct_slice()
        return await self._jpeg(http, f"/studies/{study}/series/{series}/instances/{sop}/rendered")

    async def thumbnail(self, http: aiohttp.ClientSession) -> tuple[str, int, str | None]:
        study = self.rng.choice(self.cat.ct)
        if self.rng.random() < 0.5:
            return await self._jpeg(http, f"/studies/{study.uid}/thumbnail")
        series = self.rng.choice(study.series)
        return await self._jpeg(http, f"/studies/{study.uid}/series/{series.uid}/thumbnail")


async def _clients(numbers: list[int], cat: Catalog, seed: int, start_at: float, end_at: float
                   ) -> ClientOutcome:
    out = ClientOutcome()
    clients = [Client(n, cat, seed, out) for n in numbers]
    out.patient_ids = [c.pid for c in clients]
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    sessions = [aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=1))
                for _ in clients]
    try:
        await asyncio.gather(*(c.run(s, start_at, end_at) for c, s in zip(clients, sessions, strict=True)))
    finally:
        for s in sessions:
            await s.close()
    return out


def client_process(numbers: list[int], cat: Catalog, seed: int, start_at: float, end_at: float
                   ) -> ClientOutcome:
    """One client process: ``numbers`` clients on one event loop (entry point for the process pool)."""
    cpu = time.process_time()
    out = asyncio.run(_clients(numbers, cat, seed, start_at, end_at))
    out.cpu_seconds = time.process_time() - cpu
    return out


# ------------------------------------------------------------------------------------------ results


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def op_table(samples: list[tuple[str, float, float, bool]], seconds: float) -> list[dict[str, Any]]:
    by_op: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for op, _, ms, ok in samples:
        by_op[op].append((ms, ok))
    rows = []
    for op in [*MIX, "overall"]:
        items = [(ms, ok) for s in by_op.values() for ms, ok in s] if op == "overall" else by_op.get(op, [])
        ms = [m for m, _ in items]
        rows.append({"op": op, "count": len(items), "errors": sum(not ok for _, ok in items),
                     "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "p99_ms": pct(ms, 99),
                     "max_ms": max(ms, default=float("nan")), "per_s": len(items) / seconds})
    return rows


def memory_report(series: list[tuple[float, int, int]], start: float, end: float) -> dict[str, Any]:
    """Start/peak/end of the load and the drift: mean of the last window vs the window after warm-up."""
    during = [(t - start, rss, pss) for t, rss, pss in series if start <= t <= end]
    if not during:
        return {}
    seconds = end - start
    window = min(20.0, seconds / 4)

    def mean(lo: float, hi: float, k: int) -> float:
        vals = [s[k] for s in during if lo <= s[0] <= hi]
        return sum(vals) / len(vals) / 1e6 if vals else float("nan")

    out: dict[str, Any] = {"window_s": window}
    for k, name in ((1, "rss"), (2, "pss")):
        early, late = mean(window, 2 * window, k), mean(seconds - window, seconds, k)
        peak = max(during, key=lambda s: s[k])
        out[name] = {"start_mb": during[0][k] / 1e6, "peak_mb": peak[k] / 1e6, "peak_at_s": peak[0],
                     "end_mb": during[-1][k] / 1e6, "after_warmup_mean_mb": early, "last_mean_mb": late,
                     "drift_mb": late - early, "drift_pct": (late - early) / early * 100 if early else 0.0}
    buckets: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for t, rss, pss in during:
        buckets[int(t // 10)].append((rss, pss))
    out["timeline_10s"] = [{"t": b * 10, "rss_mb": sum(r for r, _ in v) / len(v) / 1e6,
                            "pss_mb": sum(p for _, p in v) / len(v) / 1e6}
                           for b, v in sorted(buckets.items())]
    out["samples"] = len(during)
    return out


def verify_stored(base: str, outcomes: list[ClientOutcome]) -> tuple[int, int, list[str]]:
    """Count every acknowledged STOW-RS study back by QIDO-RS. (studies, instances, problems)"""
    problems: list[str] = []
    want: dict[str, int] = {}
    uncertain: set[str] = set()
    pids: list[str] = []
    for o in outcomes:
        want.update(o.stored)
        uncertain |= o.uncertain
        pids += o.patient_ids
    got: dict[str, int] = {}
    with requests.Session() as http:
        for pid in pids:
            offset = 0
            while True:
                r = http.get(f"{base}/studies", params={
                    "PatientID": pid, "includefield": NUMBER_OF_STUDY_RELATED_INSTANCES,
                    "limit": 500, "offset": offset}, headers={"Accept": JSON}, timeout=120)
                if r.status_code == 204:
                    break
                if r.status_code != 200:
                    problems.append(f"count-back QIDO PatientID={pid}: HTTP {r.status_code} {r.text[:200]}")
                    break
                objs = r.json()
                for o in objs:
                    uid = o["0020000D"]["Value"][0]
                    got[uid] = int(o.get(NUMBER_OF_STUDY_RELATED_INSTANCES, {}).get("Value", [0])[0])
                if len(objs) < 500:
                    break
                offset += 500
    lost = [(uid, n, got.get(uid, 0)) for uid, n in want.items() if got.get(uid, 0) < n]
    extra = [(uid, n, got[uid]) for uid, n in want.items()
             if uid in got and got[uid] > n and uid not in uncertain]
    unknown = [uid for uid in got if uid not in want]
    for uid, n, g in lost[:10]:
        problems.append(f"acknowledged instances missing: study {uid}: {g} found, {n} acknowledged")
    if len(lost) > 10:
        problems.append(f"... {len(lost) - 10} more studies with missing instances")
    for uid, n, g in extra[:5]:
        problems.append(f"study {uid}: {g} instances found, only {n} stored")
    if unknown:
        problems.append(f"{len(unknown)} studies of the load patients never stored by a client, "
                        f"e.g. {unknown[0]}")
    return len(want), sum(want.values()), problems


LOG_PROBLEM = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|Exception")


def log_problems(path: Path) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if LOG_PROBLEM.search(line)]


def cpu_seconds(pid: int) -> float:
    try:
        p = psutil.Process(pid)
        total = sum(p.cpu_times()[:2])
        for c in p.children(recursive=True):
            try:
                total += sum(c.cpu_times()[:2])
            except psutil.Error:
                continue
        return total
    except psutil.Error:
        return 0.0


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="20 clients, 20 s, 2,000 tiny instances")
    p.add_argument("--clients", type=int, help="concurrent clients (50; quick 20)")
    p.add_argument("--seconds", type=float, help="duration of the load (120; quick 20)")
    p.add_argument("--tiny", type=int, help="tiny instances preloaded (5000; quick 2000)")
    p.add_argument("--client-processes", type=int, default=2,
                   help="processes the clients are spread over (2)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/imaging-archive-bench"))
    p.add_argument("--port", type=int, default=18480)
    p.add_argument("--json", type=Path, help="also write every figure as JSON")
    p.add_argument("--keep-data", action="store_true", help="keep the server's data dir")
    args = p.parse_args(argv)
    args.clients = args.clients or (20 if args.quick else 50)
    args.seconds = args.seconds or (20.0 if args.quick else 120.0)
    args.tiny = args.tiny or (2000 if args.quick else 5000)
    args.client_processes = max(1, min(args.client_processes, args.clients))
    return args


def preload(arch: Archive, ct: datasets.CtSet, tiny: datasets.TinySet) -> None:
    started = time.perf_counter()
    files = iter([ct.files[i:i + 25] for i in range(0, len(ct.files), 25)])
    r1 = asyncio.run(httpclient.stow(arch.base + "/studies",
                                     ([p.read_bytes() for p in batch] for batch in files), 2))
    r2 = asyncio.run(httpclient.stow(arch.base + "/studies", tiny.batches(100), 4))
    for r in (r1, r2):
        if r.failures:
            f = r.failures[0]
            raise RuntimeError(f"preload STOW-RS failed ({len(r.failures)} requests): "
                               f"HTTP {f.status} {f.detail}")
    print(f"  preloaded {r1.instances} CT ({r1.bytes / 1e6:.0f} MB) + {r2.instances:,} tiny instances in "
          f"{time.perf_counter() - started:.1f} s")


def run_load(args: argparse.Namespace, cat: Catalog, server_pid: int, sampler: SeriesSampler
             ) -> tuple[list[ClientOutcome], dict[str, float]]:
    groups = [list(range(i, args.clients, args.client_processes)) for i in range(args.client_processes)]
    ctx = multiprocessing.get_context("spawn")  # the sampler thread runs here: no fork
    with concurrent.futures.ProcessPoolExecutor(len(groups), mp_context=ctx) as pool:
        start_at = time.time() + 4.0  # time for the processes to start and import
        end_at = start_at + args.seconds
        futures = [pool.submit(client_process, g, cat, args.seed, start_at, end_at) for g in groups]
        time.sleep(max(0.0, start_at - time.time()))
        t_start, cpu_start, load_start = time.monotonic(), cpu_seconds(server_pid), os.getloadavg()[0]
        sampler.set_phase("load")
        load_mid = None
        while not all(f.done() for f in futures):
            time.sleep(0.5)
            if load_mid is None and time.time() >= start_at + args.seconds / 2:
                load_mid = os.getloadavg()[0]
        t_end = time.monotonic()
        sampler.set_phase("after")
        outcomes = [f.result() for f in futures]
    timing = {"start": t_start, "end": t_end, "seconds": t_end - t_start,
              "server_cpu_s": cpu_seconds(server_pid) - cpu_start,
              "load_start": load_start, "load_mid": load_mid or os.getloadavg()[0],
              "load_end": os.getloadavg()[0]}
    return outcomes, timing


def fmt(v: float) -> str:
    return "-" if v != v else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache = args.workdir / "cache"
    run_dir = args.workdir / f"load-{time.strftime('%Y%m%d-%H%M%S')}"
    problems: list[str] = []
    print(f"1. data ({args.tiny:,} tiny instances, CT 2x1x50 + a 200-slice series)")
    ct = datasets.ct_set(cache, 2, 1, 50, 200)
    tiny = datasets.tiny_set(cache, args.tiny)
    families = sorted({s.patient_name.split("^")[0] for s in tiny.studies})
    months = sorted({s.date[:6] for s in tiny.studies})
    print(f"2. server on 127.0.0.1:{args.port}, data in {run_dir}")
    arch = Archive(run_dir, args.port)
    cat = Catalog(arch.base, tiny.studies + ct.studies, tiny.studies, ct.studies, families, months)
    figures: dict[str, Any] = {}
    sampler: SeriesSampler | None = None
    try:
        arch.start()
        preload(arch, ct, tiny)
        sampler = SeriesSampler(arch.proc.pid, 0.1)
        sampler.set_phase("preloaded")
        sampler.start()
        time.sleep(1.0)
        print(f"3. load: {args.clients} clients in {args.client_processes} processes for "
              f"{args.seconds:.0f} s (load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs)",
              flush=True)
        outcomes, timing = run_load(args, cat, arch.proc.pid, sampler)
        time.sleep(1.0)
        sampler.stop()
        alive = arch.proc.alive()
        if not alive:
            problems.append(f"the server died during the load (exit {arch.proc.exit_code()}):\n"
                            f"{arch.proc.log_tail()}")
        samples = [s for o in outcomes for s in o.samples]
        failures = [f for o in outcomes for f in o.failures]
        rows = op_table(samples, timing["seconds"])
        mem = memory_report(sampler.series, timing["start"], timing["end"])
        stored = (0, 0, [])
        if alive:
            print("4. counting acknowledged STOW-RS studies back by QIDO-RS ...", flush=True)
            stored = verify_stored(arch.base, outcomes)
            problems += stored[2]
        client_cpu = sum(o.cpu_seconds for o in outcomes)
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        arch.stop()
        if arch.proc.log_path.exists():
            shutil.copy(arch.proc.log_path, args.workdir / "last-load-server.log")
    log_lines = log_problems(args.workdir / "last-load-server.log")

    # -- report
    print(f"\n== load: {args.clients} clients, {timing['seconds']:.1f} s ==")
    header = (f"{'operation':16}{'count':>8}{'errors':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
              f"{'max ms':>9}{'/s':>8}")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        if r["op"] == "overall":
            print("-" * len(header))
        print(f"{r['op']:16}{r['count']:>8}{r['errors']:>8}{fmt(r['p50_ms']):>9}{fmt(r['p95_ms']):>9}"
              f"{fmt(r['p99_ms']):>9}{fmt(r['max_ms']):>9}{r['per_s']:>8.1f}")
    verdict = "all counted back by QIDO-RS" if not stored[2] else "NOT all counted back (see problems)"
    print(f"STOW-RS during the load: {stored[1]:,} instances in {stored[0]:,} studies acknowledged, "
          f"{verdict}")
    if mem:
        print(f"\nserver memory (with children, up to {sampler.max_processes} processes), sampled every "
              f"100 ms ({mem['samples']} samples during the load; start = before the codec workers "
              "start at the first frame/rendered request):")
        w = mem["window_s"]
        for k in ("rss", "pss"):
            m = mem[k]
            print(f"  {k.upper()}: start {m['start_mb']:.0f} MB, peak {m['peak_mb']:.0f} MB "
                  f"(+{m['peak_mb'] - m['start_mb']:.0f}, at {m['peak_at_s']:.0f} s), "
                  f"end {m['end_mb']:.0f} MB (+{m['end_mb'] - m['start_mb']:.0f}); "
                  f"mean {w:.0f}-{2 * w:.0f} s {m['after_warmup_mean_mb']:.0f} MB, "
                  f"last {w:.0f} s {m['last_mean_mb']:.0f} MB "
                  f"(drift {m['drift_mb']:+.1f} MB, {m['drift_pct']:+.1f} %)")
        print("  PSS timeline (10 s means, MB): "
              + " ".join(f"{b['pss_mb']:.0f}" for b in mem["timeline_10s"]))
        d = mem["pss"]
        if d["drift_mb"] > 10 and d["drift_pct"] > 10:
            problems.append(f"server memory keeps growing: PSS mean {d['after_warmup_mean_mb']:.0f} MB after "
                            f"warm-up, {d['last_mean_mb']:.0f} MB over the last {mem['window_s']:.0f} s")
    secs = timing["seconds"]
    print(f"\nCPU during the load: server {timing['server_cpu_s']:.0f} s "
          f"({timing['server_cpu_s'] / secs * 100:.0f} % of one core), clients {client_cpu:.0f} s "
          f"({client_cpu / secs * 100:.0f} %); {os.cpu_count()} CPUs; load average (1 min) "
          f"{timing['load_start']:.2f} at start, {timing['load_mid']:.2f} mid-run, "
          f"{timing['load_end']:.2f} at end")
    if failures:
        problems.append(f"{len(failures)} failed requests (listed above)")
        print(f"\n{len(failures)} failed request(s), grouped (operation, status, detail):")
        groups = Counter((f.op, f.status, f.detail[:160]) for f in failures)
        for (op, status, detail), n in groups.most_common(30):
            example = next(f.path for f in failures
                           if (f.op, f.status, f.detail[:160]) == (op, status, detail))
            print(f"  {n:5} x {op} HTTP {status}: {detail}\n          e.g. {example[:150]}")
    if log_lines:
        problems.append(f"{len(log_lines)} error/traceback lines in the server log "
                        f"({args.workdir / 'last-load-server.log'}), e.g. {log_lines[0][:200]}")
    figures.update({
        "clients": args.clients, "seconds": timing["seconds"], "client_processes": args.client_processes,
        "tiny_preloaded": args.tiny, "ct_preloaded": len(ct.files), "mix": MIX, "operations": rows,
        "memory": {**mem, "max_processes": sampler.max_processes if sampler else 0,
                   "mean_sample_ms": sampler.mean_sample_ms if sampler else 0.0},
        "stow_acknowledged": {"studies": stored[0], "instances": stored[1]},
        "cpu": {"server_s": timing["server_cpu_s"], "clients_s": client_cpu, "cpus": os.cpu_count()},
        "load_average_1min": {"start": timing["load_start"], "mid": timing["load_mid"],
                              "end": timing["load_end"]},
        "failures": [f.__dict__ for f in failures[:200]], "failure_count": len(failures),
        "server_log_problems": log_lines[:50], "problems": problems,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")
    if not args.keep_data:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"\n{len(problems)} problem(s)" + (":" if problems else ""))
    for p in problems:
        print(f"  - {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ProcessError as exc:
        print(f"server failed: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
