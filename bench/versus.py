"""Head-to-head benchmark: imaging-archive and Orthanc, same machine, same data, same client (issue 5).

    python bench/versus.py --quick          # small sizes, < 3 min
    python bench/versus.py                  # full: 10k and 100k instances, ~2 GB of CT per server
    python bench/versus.py --json bench/out/versus.json
    python bench/versus.py --archive-workers 2   # imaging-archive with [http] workers = 2

Orthanc is Debian's (packages ``orthanc``, ``orthanc-dicomweb``, ``orthanc-gdcm``), installed with
apt-get when ``/usr/sbin/Orthanc`` is missing (``servers.ensure_orthanc``). Both servers run side by
side on their own ports with a fresh data folder each, kept to local clients (``servers.py``), and
every step runs against imaging-archive, then Orthanc, before the next step:

 1. data (``datasets.py``, cached): a CT set of 512x512 16-bit slices (0.5 MB each) with one long
    series, a second CT set with UIDs of its own for C-STORE, and tiny (8x8) instances over many
    patients, in two sets with UIDs and patient IDs of their own (the small size, then the rest up
    to the large size);
 2. machine limits (``limits.py``), in the same run before the servers start: write+fsync+rename
    of CT-sized files (1 and N writers), the same files read back after ``posix_fadvise(DONTNEED)``
    (1 and N readers), plain-file HTTP GET over loopback;
 3. STOW-RS of the CT set (50 per request, N clients); counted back per study by QIDO-RS;
 4. single-frame retrieve frames/s of the long series with only the CT set stored (small index);
 5. STOW-RS of the tiny set up to the small size (100 per request, N clients);
 6. C-STORE of the second CT set with dcmtk ``storescu`` over N parallel associations; every
    response must be Success and QIDO-RS must count every study complete;
 7. QIDO-RS latencies (``qido.py``, 8 query kinds, one at a time) at the small size;
 8. STOW-RS of the second tiny set up to the large size; when Orthanc's tiny ingest rate of step 5
    says that would take it longer than ``--max-load-seconds``, the large size is cut (printed);
 9. QIDO-RS at the large size; /metadata of the long series (first, then median); WADO-RS retrieve
    of the long series (checked run, then median MB/s); single-frame frames/s again (large index);
    rendered JPEG images/s;
10. one table: figure, imaging-archive, Orthanc, ratio (>1 = imaging-archive better), share of the
    machine limit, target, met/missed; problems (every answer is checked) listed at the end.

MB = 10^6 bytes. Client and servers share the machine's CPUs; the idle server waits while the other
is measured. Nothing is asserted: the exit code is 1 when there is any problem.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import dcmtk
import httpclient
import limits
import qido
import report
import requests
import servers
from pixels import OCTET_ANY, rate
from procs import MemorySampler
from run import file_batches, require_free_port, warm_page_cache

RETRIEVE_ACCEPT = httpclient.RETRIEVE_ACCEPT
SCU_AE = "BENCHSCU"
ARCHIVE, ORTHANC = servers.Archive.name, servers.Orthanc.name
FSYNC_MAX_FILES = 8000


@dataclass
class Sizes:
    ct: tuple[int, int, int, int]  # studies, series per study, slices per series, long series
    cstore: tuple[int, int, int, int]
    small: int  # instances stored at the small index size (CT + C-STORE + tiny)
    large: int
    queries_per_kind: int
    frame_requests: int
    rendered_requests: int
    metadata_runs: int
    retrieve_runs: int
    fsync_seconds: float
    plain_mb: int
    clients: int
    ct_batch: int = 50
    tiny_batch: int = 100


def sizes_from(args: argparse.Namespace) -> Sizes:
    if args.quick:
        s = Sizes(ct=(2, 1, 50, 200), cstore=(1, 1, 50, 50), small=1_000, large=3_000, queries_per_kind=10,
                  frame_requests=200, rendered_requests=100, metadata_runs=3, retrieve_runs=2,
                  fsync_seconds=1.5, plain_mb=128, clients=args.clients)
    else:
        s = Sizes(ct=(10, 2, 50, 1000), cstore=(10, 2, 50, 1000), small=10_000, large=100_000,
                  queries_per_kind=25, frame_requests=400, rendered_requests=200, metadata_runs=5,
                  retrieve_runs=3, fsync_seconds=4.0, plain_mb=256, clients=args.clients)
    s.small = args.small or s.small
    s.large = args.large or s.large
    s.queries_per_kind = args.queries_per_kind or s.queries_per_kind
    return s


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (< 3 min)")
    p.add_argument("--small", type=int, help="instances stored at the small size (10000; quick 1000)")
    p.add_argument("--large", type=int, help="instances stored at the large size (100000; quick 3000)")
    p.add_argument("--max-load-seconds", type=float, default=600.0,
                   help="cut the large size when Orthanc would need longer than this to load it (600)")
    p.add_argument("--queries-per-kind", type=int, help="QIDO queries per kind (default 25; quick 10)")
    p.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients / associations (4)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/imaging-archive-bench"))
    p.add_argument("--port", type=int, default=18380, help="imaging-archive HTTP port (18380)")
    p.add_argument("--dimse-port", type=int, default=18384, help="imaging-archive DIMSE port (18384)")
    p.add_argument("--orthanc-port", type=int, default=18382, help="Orthanc HTTP port (18382)")
    p.add_argument("--orthanc-dicom-port", type=int, default=18383, help="Orthanc DICOM port (18383)")
    p.add_argument("--file-port", type=int, default=18381, help="plain file server port (18381)")
    p.add_argument("--archive-workers", type=int, default=1,
                   help="imaging-archive HTTP worker processes, [http] workers (1: the default "
                        "configuration; 2 uses both cores as Orthanc's threads do)")
    p.add_argument("--json", type=Path, help="also write every figure as JSON")
    p.add_argument("--keep-data", action="store_true", help="keep both servers' data after the run")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ checks


def study_counts(base: str, studies: list[datasets.StudyRecord]) -> list[str]:
    """QIDO-RS each study; what differs from the catalog (NumberOfStudyRelatedInstances)."""
    wrong: list[str] = []
    with requests.Session() as http:
        for study in studies:
            r = http.get(f"{base}/studies", params={"StudyInstanceUID": study.uid,
                                                    "includefield": "NumberOfStudyRelatedInstances"},
                         headers={"Accept": httpclient.DICOM_JSON}, timeout=120)
            got: Any = 0
            if r.status_code == 200:
                objs = r.json()
                got = (objs[0].get("00201208", {}).get("Value", ["?"])[0] if len(objs) == 1
                       else f"{len(objs)} studies")
            elif r.status_code != 204:
                got = f"HTTP {r.status_code}"
            if str(got) != str(study.instances):
                wrong.append(f"study {study.uid}: {got} instances, {study.instances} expected")
    return wrong


# ------------------------------------------------------------------------------------------- bench


class Versus:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.sizes = args, sizes_from(args)
        self.run_dir = args.workdir / f"versus-{time.strftime('%Y%m%d-%H%M%S')}"
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.figures: dict[str, dict[str, Any]] = {}
        self.limits: dict[str, Any] = {}
        self.targets: list[servers.Target] = []
        self.samplers: dict[str, MemorySampler] = {}
        self.catalog: list[datasets.StudyRecord] = []  # every study stored so far, in both servers
        self.stored = 0
        self.tiny_studies: list[datasets.StudyRecord] = []
        self.index_sizes: dict[str, int] = {}
        self.load_at_start = os.getloadavg()[0]

    # ------------------------------------------------------------------------------- helpers

    def each(self, key: str, fn: Callable[[servers.Target], dict[str, Any] | None]) -> None:
        """Run ``fn`` against every target in turn; record its figures under ``key``."""
        for t in self.targets:
            if not t.proc.alive():
                continue
            started = time.perf_counter()
            try:
                out = fn(t)
            except Exception as exc:  # noqa: BLE001 - a failed step is a problem; the run goes on
                self.problems.append(f"{t.name} {key}: {type(exc).__name__}: {exc}")
                out = None
            if out is not None:
                out["step_seconds"] = time.perf_counter() - started
                self.figures.setdefault(t.name, {})[key] = out
            if not t.proc.alive():
                self.problems.append(f"{t.name} exited (code {t.proc.exit_code()}) during {key}; log tail:\n"
                                     f"{t.proc.log_tail(15)}")

    def stow(self, t: servers.Target, label: str, batches: Any, total: int) -> httpclient.StowResult:
        last = [time.monotonic()]

        def progress(r: httpclient.StowResult) -> None:
            if time.monotonic() - last[0] >= 15:
                last[0] = time.monotonic()
                print(f"    {t.name}: {r.instances:,}/{total:,} instances", flush=True)
        r = asyncio.run(httpclient.stow(f"{t.base}/studies", batches, self.sizes.clients, progress))
        for f in r.failures[:3]:
            self.problems.append(f"{t.name} {label}: POST /studies batch #{f.batch} -> {f.status}: "
                                 f"{f.detail[:300]}")
        if len(r.failures) > 3:
            self.problems.append(f"{t.name} {label}: ... {len(r.failures) - 3} more failed requests")
        if r.instances != total:
            self.problems.append(f"{t.name} {label}: {r.instances} of {total} instances sent")
        print(f"  {t.name:16} {r.instances:,} instances in {r.seconds:.1f} s: {r.instances_per_s:,.0f} "
              f"instances/s, {r.mb_per_s:.1f} MB/s; {r.requests - len(r.failures)}/{r.requests} "
              "requests 200 and complete", flush=True)
        return r

    @staticmethod
    def _stow_dict(r: httpclient.StowResult) -> dict[str, Any]:
        return {"instances": r.instances, "bytes": r.bytes, "seconds": r.seconds,
                "instances_s": r.instances_per_s, "mb_s": r.mb_per_s, "failed_requests": len(r.failures)}

    def fig(self, name: str, key: str, field: str) -> float | None:
        value = self.figures.get(name, {}).get(key, {}).get(field)
        return float(value) if isinstance(value, int | float) else None

    # --------------------------------------------------------------------------------- steps

    def prepare(self) -> None:
        report.section("1. data")
        s, cache = self.sizes, self.args.workdir / "cache"
        self.ct = datasets.ct_set(cache, *s.ct)
        self.cs = datasets.ct_set(cache, *s.cstore, tag="cstore1")
        fixed = len(self.ct.files) + len(self.cs.files)
        if s.small <= fixed or s.large <= s.small:
            raise ValueError(f"sizes: need {fixed} < small ({s.small}) < large ({s.large}); "
                             f"the CT and C-STORE sets hold {fixed} instances")
        self.tiny_small = datasets.tiny_set(cache, s.small - fixed)
        print(f"  CT (STOW-RS): {len(self.ct.files):,} instances, {self.ct.total_bytes / 1e6:.0f} MB, "
              f"long series {self.ct.big_count} instances ({self.ct.big_bytes / 1e6:.0f} MB)")
        print(f"  CT (C-STORE, UIDs of its own): {len(self.cs.files):,} instances, "
              f"{self.cs.total_bytes / 1e6:.0f} MB")
        print(f"  tiny up to the small size: {self.tiny_small.count:,} instances over "
              f"{len(self.tiny_small.studies):,} studies; the large size ({s.large:,}) is prepared after "
              "Orthanc's tiny ingest rate is known")
        self.big_sops = [datasets.make_uid("ct-sop", self.ct.big_series_uid, k)
                         for k in range(self.ct.big_count)]

    def measure_limits(self) -> None:
        report.section("2. machine limits (same run, before the servers start)")
        s = self.sizes
        file_bytes = round(self.ct.total_bytes / len(self.ct.files))
        probe = self.run_dir / "limits-probe"
        rows = []
        try:
            for n in (1, s.clients):
                w = limits.fsync_probe(probe, file_bytes, n, s.fsync_seconds, FSYNC_MAX_FILES, keep=True)
                r = limits.read_probe(probe, n)
                self.limits[f"fsync_{n}_mb_s"], self.limits[f"read_{n}_mb_s"] = w.mb_per_s, r.mb_per_s
                rows.append((f"write+fsync+rename, {n} writer(s)", f"{w.mb_per_s:.1f} MB/s",
                             f"{w.files} x {file_bytes / 1e3:.0f} kB"))
                rows.append((f"read back the same files, {n} reader(s)", f"{r.mb_per_s:.1f} MB/s",
                             "after posix_fadvise(DONTNEED)" if r.dropped else "page cache NOT dropped"))
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        self.limits["fsync_limit_mb_s"] = max(self.limits[f"fsync_{n}_mb_s"] for n in (1, s.clients))
        self.limits["read_limit_mb_s"] = max(self.limits[f"read_{n}_mb_s"] for n in (1, s.clients))
        require_free_port(self.args.file_port)
        plain = limits.loopback_get(self.run_dir / "plain", s.plain_mb * 10**6, self.args.file_port,
                                    s.retrieve_runs)
        self.limits["loopback_get_mb_s"] = plain.median_mb_per_s
        rows.append(("plain-file HTTP GET over loopback", f"{plain.median_mb_per_s:.1f} MB/s",
                     f"{s.plain_mb} MB file, median of {len(plain.runs)}"))
        print(report.table(rows, ("limit", "rate", "detail")))

    def start_servers(self) -> None:
        report.section("3. servers")
        a = self.args
        for port in (a.port, a.dimse_port, a.orthanc_port, a.orthanc_dicom_port):
            require_free_port(port)
        for note in servers.ensure_orthanc(lambda text: print(text, flush=True)):
            self.notes.append(note)
            print(f"  note: {note}")
        self.targets = [
            servers.Archive(self.run_dir / "archive", a.port, dimse_port=a.dimse_port, store_aets=(SCU_AE,),
                            max_results=100_000, workers=a.archive_workers),
            servers.Orthanc(self.run_dir, a.orthanc_port, a.orthanc_dicom_port, scu_aets=(SCU_AE,))]
        for t in self.targets:
            started = time.perf_counter()
            t.start(timeout=60)
            dcmtk.wait_for_port(t.dicom_port or 0, 15)
            self.samplers[t.name] = sampler = MemorySampler(t.proc.pid, 0.2)
            sampler.start()
            print(f"  {t.name:16} ready in {time.perf_counter() - started:.1f} s: HTTP {t.base}, "
                  f"DICOM {t.ae_title}@127.0.0.1:{t.dicom_port} (pid {t.proc.pid})")
        versions = servers.orthanc_versions(self.targets[1].rest)  # type: ignore[attr-defined]
        self.notes.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        self.notes.append(f"imaging-archive HTTP worker processes: {a.archive_workers}")
        print(f"  {self.notes[-1]}; storescu: {dcmtk.version('storescu')}")

    def stow_ct(self) -> None:
        report.section(f"4. STOW-RS CT ({self.sizes.ct_batch} per request, {self.sizes.clients} clients)")
        files = self.ct.files

        def one(t: servers.Target) -> dict[str, Any]:
            warm_page_cache(files)
            r = self.stow(t, "STOW-RS CT", file_batches(files, self.sizes.ct_batch), len(files))
            for problem in study_counts(t.base, self.ct.studies)[:3]:
                self.problems.append(f"{t.name} STOW-RS CT: QIDO-RS after: {problem}")
            return self._stow_dict(r)
        self.each("stow_ct", one)
        self.catalog += self.ct.studies
        self.stored += len(self.ct.files)

    def frames(self, key: str) -> None:
        n, c = self.sizes.frame_requests, self.sizes.clients
        report.section(f"single-frame retrieve at {self.stored:,} instances ({n} requests, {c} clients)")
        self.index_sizes[key] = self.stored
        ct = self.ct

        def one(t: servers.Target) -> dict[str, Any]:
            prefix = f"{t.base}/studies/{ct.big_study_uid}/series/{ct.big_series_uid}/instances/"
            urls = [f"{prefix}{self.big_sops[i % len(self.big_sops)]}/frames/1" for i in range(n)]
            asyncio.run(rate(urls[:50], OCTET_ANY, c, "multipart"))  # warm-up
            r = asyncio.run(rate(urls, OCTET_ANY, c, "multipart"))
            if r.errors:
                self.problems.append(f"{t.name} {key}: {len(r.errors)} of {n} answers wrong, "
                                     f"e.g. {r.errors[0]}")
            print(f"  {t.name:16} {r.per_s:,.0f} frames/s ({r.bytes / r.requests / 1e3:.0f} kB each)")
            return {"per_s": r.per_s, "requests": n, "errors": len(r.errors), "instances": self.stored}
        self.each(key, one)

    def stow_tiny(self, key: str, tiny: datasets.TinySet) -> None:
        report.section(f"STOW-RS tiny: {tiny.count:,} instances ({self.sizes.tiny_batch} per request, "
                       f"{self.sizes.clients} clients), {self.stored:,} -> {self.stored + tiny.count:,} "
                       "stored")
        self.each(key, lambda t: self._stow_dict(self.stow(t, key, tiny.batches(self.sizes.tiny_batch),
                                                           tiny.count)))
        self.catalog += tiny.studies
        self.tiny_studies += tiny.studies
        self.stored += tiny.count

    def cstore(self) -> None:
        c = self.sizes.clients
        report.section(f"C-STORE CT with dcmtk storescu, {c} parallel associations")
        data = self.cs
        folders = dcmtk.link_folders(data.files, c, self.run_dir / "cstore-links")
        log_root = self.args.workdir / "last-versus-dcmtk-logs"
        shutil.rmtree(log_root, ignore_errors=True)

        def one(t: servers.Target) -> dict[str, Any]:
            warm_page_cache(data.files)
            log_dir = log_root / t.name
            r = dcmtk.store(folders, len(data.files), data.total_bytes, t.dicom_port or 0, t.ae_title, SCU_AE,
                            log_dir)
            if r.succeeded != len(data.files) or any(r.exit_codes):
                others = ", ".join(f"{k} x{v}" for k, v in r.statuses.items() if k != "Success") or "none"
                self.problems.append(f"{t.name} C-STORE: {r.succeeded}/{len(data.files)} responses Success "
                                     f"(others: {others}); exit codes {r.exit_codes}; "
                                     f"{dcmtk.log_excerpt(r.logs[0])} (logs in {log_dir})")
            wrong = study_counts(t.base, data.studies)
            for problem in wrong[:3]:
                self.problems.append(f"{t.name} C-STORE: QIDO-RS after: {problem}")
            print(f"  {t.name:16} {r.succeeded:,}/{len(data.files):,} Success in {r.seconds:.1f} s: "
                  f"{r.instances_per_s:,.1f} instances/s, {r.mb_per_s:.1f} MB/s; QIDO-RS: "
                  f"{len(data.studies) - len(wrong)}/{len(data.studies)} studies complete")
            return {"instances": len(data.files), "bytes": data.total_bytes, "seconds": r.seconds,
                    "instances_s": r.instances_per_s, "mb_s": r.mb_per_s, "success": r.succeeded,
                    "associations": c, "exit_codes": r.exit_codes}
        self.each("cstore", one)
        self.catalog += data.studies
        self.stored += len(data.files)

    def query(self, key: str) -> None:
        per = self.sizes.queries_per_kind
        report.section(f"QIDO-RS at {self.stored:,} instances ({len(self.catalog):,} studies; {per} queries "
                       f"x {len(qido.KINDS)} kinds, one at a time)")
        self.index_sizes[key] = self.stored

        def one(t: servers.Target) -> dict[str, Any]:
            res = qido.measure(t.base, self.tiny_studies, self.catalog, per)
            every = [v for ms in res.latencies_ms.values() for v in ms]
            for f in res.failures[:3]:
                self.problems.append(f"{t.name} {key}: {f.kind} GET {f.path} -> {f.status}: {f.detail[:200]}")
            if len(res.failures) > 3:
                self.problems.append(f"{t.name} {key}: ... {len(res.failures) - 3} more wrong answers")
            kinds = {k: {"p50_ms": report.percentile(v, 50), "p95_ms": report.percentile(v, 95)}
                     for k, v in res.latencies_ms.items()}
            out = {"p50_ms": report.percentile(every, 50), "p95_ms": report.percentile(every, 95),
                   "max_ms": max(every), "queries": len(every), "wrong": len(res.failures), "kinds": kinds,
                   "instances": self.stored, "studies": len(self.catalog)}
            slowest = max(kinds, key=lambda k: kinds[k]["p95_ms"])
            print(f"  {t.name:16} p50 {out['p50_ms']:.1f} ms, p95 {out['p95_ms']:.1f} ms, max "
                  f"{out['max_ms']:.1f} ms (slowest kind: {slowest}, p95 {kinds[slowest]['p95_ms']:.1f} ms); "
                  f"{len(res.failures)}/{len(every)} answers wrong", flush=True)
            return out
        self.each(key, one)

    def large_size(self) -> datasets.TinySet | None:
        """The second tiny set, cut when Orthanc would need more than --max-load-seconds for it."""
        s = self.sizes
        extra = s.large - self.stored
        rate_o = self.fig(ORTHANC, "stow_tiny_small", "instances_s")
        if rate_o:
            estimate = extra / rate_o
            if estimate > self.args.max_load_seconds:
                fit = max(1_000, int(rate_o * self.args.max_load_seconds) // 1_000 * 1_000)
                note = (f"Orthanc ingested tiny instances at {rate_o:,.0f}/s: {extra:,} more would take it "
                        f"~{estimate / 60:.0f} min (> {self.args.max_load_seconds / 60:.0f} min); the large "
                        f"size is cut from {s.large:,} to {self.stored + fit:,} instances")
                print(f"  note: {note}")
                self.notes.append(note)
                extra = fit
        if extra <= 0:
            return None
        return datasets.tiny_set(self.args.workdir / "cache", extra, seed=8, pid_prefix="PIX")

    def metadata(self) -> None:
        ct, runs = self.ct, self.sizes.metadata_runs
        report.section(f"/metadata of the {ct.big_count}-instance series at {self.stored:,} instances "
                       f"(first run, then median of {runs})")

        def one(t: servers.Target) -> dict[str, Any]:
            url = f"{t.base}/studies/{ct.big_study_uid}/series/{ct.big_series_uid}/metadata"
            answers = asyncio.run(httpclient.get_many(url, runs + 1))
            for status, _, body in (answers[0], answers[-1]):
                problem = httpclient.check_metadata(status, body, ct.big_count)
                if problem:
                    self.problems.append(f"{t.name} metadata: {problem}")
                    break
            rest = [a[1] * 1000 for a in answers[1:]]
            out = {"first_ms": answers[0][1] * 1000, "median_ms": report.median(rest), "runs_ms": rest,
                   "bytes": len(answers[-1][2]), "instances": self.stored}
            print(f"  {t.name:16} first {out['first_ms']:.1f} ms, median {out['median_ms']:.1f} ms, "
                  f"{out['bytes'] / 1e6:.2f} MB of JSON")
            return out
        self.each("metadata", one)

    def retrieve(self) -> None:
        ct, runs = self.ct, self.sizes.retrieve_runs
        report.section(f"WADO-RS retrieve of the {ct.big_count}-instance series "
                       f"({ct.big_bytes / 1e6:.0f} MB; 1 checked run + {runs} timed)")

        def one(t: servers.Target) -> dict[str, Any]:
            url = f"{t.base}/studies/{ct.big_study_uid}/series/{ct.big_series_uid}"
            check, timed = asyncio.run(httpclient.retrieve_runs(url, runs))
            if check.status != 200 or check.parts != ct.big_count or check.bytes < ct.big_bytes:
                self.problems.append(f"{t.name} retrieve: HTTP {check.status}, {check.parts} parts, "
                                     f"{check.bytes:,} bytes; {ct.big_count} parts >= {ct.big_bytes:,} "
                                     f"bytes expected: {check.head[:150]!r}")
            rates = [d.mb_per_s for d in timed]
            out = {"median_mb_s": report.median(rates), "runs_mb_s": rates, "checked_mb_s": check.mb_per_s,
                   "parts": check.parts, "bytes": check.bytes}
            print(f"  {t.name:16} median {out['median_mb_s']:.1f} MB/s (runs "
                  f"{', '.join(f'{x:.0f}' for x in rates)}; checked run {check.mb_per_s:.0f} MB/s, "
                  f"{check.parts} parts)")
            return out
        self.each("retrieve", one)

    def rendered(self) -> None:
        n, c = self.sizes.rendered_requests, self.sizes.clients
        report.section(f"rendered JPEG of 512x512 CT instances ({n} requests, {c} clients)")
        ct = self.ct

        def one(t: servers.Target) -> dict[str, Any]:
            prefix = f"{t.base}/studies/{ct.big_study_uid}/series/{ct.big_series_uid}/instances/"
            urls = [f"{prefix}{self.big_sops[i % len(self.big_sops)]}/rendered" for i in range(n)]
            asyncio.run(rate(urls[:10], "image/jpeg", c, "jpeg"))  # warm-up
            r = asyncio.run(rate(urls, "image/jpeg", c, "jpeg"))
            if r.errors:
                self.problems.append(f"{t.name} rendered: {len(r.errors)} of {n} answers wrong, "
                                     f"e.g. {r.errors[0]}")
            print(f"  {t.name:16} {r.per_s:,.0f} images/s")
            return {"per_s": r.per_s, "requests": n, "errors": len(r.errors)}
        self.each("rendered", one)

    # -------------------------------------------------------------------------------- driver

    def run(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            self.prepare()
            self.measure_limits()
            self.start_servers()
            self.stow_ct()
            self.frames("frames_small")
            self.stow_tiny("stow_tiny_small", self.tiny_small)
            self.cstore()
            self.query("qido_small")
            extra = self.large_size()
            if extra is not None:
                self.stow_tiny("stow_tiny_large", extra)
            self.query("qido_large")
            self.metadata()
            self.retrieve()
            self.frames("frames_large")
            self.rendered()
        except Exception as exc:  # noqa: BLE001 - reported with whatever was measured
            self.problems.append(f"run stopped: {type(exc).__name__}: {exc}")
        finally:
            self.shutdown()
        self.summarize(time.perf_counter() - started)
        return 1 if any(not p.startswith(ORTHANC + " ") for p in self.problems) else 0

    def shutdown(self) -> None:
        for name, sampler in self.samplers.items():
            sampler.stop()
            self.figures.setdefault(name, {})["memory"] = {"peak_pss_mb": sampler.peak.pss / 1e6,
                                                           "peak_rss_mb": sampler.peak.rss / 1e6}
        logs = self.args.workdir / "last-versus-logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True, exist_ok=True)
        for t in self.targets:
            code = t.stop()
            if code not in (0, None, -15):
                self.problems.append(f"{t.name} exit code on SIGTERM: {code}")
            if t.proc.log_path.exists():
                shutil.copy(t.proc.log_path, logs / f"{t.name}.log")
        if not self.args.keep_data:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # ------------------------------------------------------------------------------- summary

    def rows(self) -> list[dict[str, Any]]:
        arc, ort = ARCHIVE, ORTHANC
        lim = self.limits
        rows: list[dict[str, Any]] = []

        def add(figure: str, key: str, field: str, unit: str, higher_better: bool = True,
                target: float | None = None, limits: tuple[tuple[float | None, str], ...] = ()) -> None:
            a, o = self.fig(arc, key, field), self.fig(ort, key, field)
            ratio = None
            if a and o:
                ratio = a / o if higher_better else o / a
            shares = ["/".join("-" if v is None else f"{v / limit:.0%}" for v in (a, o)) + f" of {name}"
                      for limit, name in limits if limit]
            share = "; ".join(shares) or None
            rows.append({"figure": figure, "unit": unit, "archive": a, "orthanc": o, "ratio": ratio,
                         "limit_share": share,
                         "target": None if target is None else f">= {target:g}x Orthanc"
                         + ("" if higher_better else " (faster)"),
                         "met": None if target is None or ratio is None else ratio >= target})

        def extra(figure: str, value: float | None, target: float, shown: str, target_text: str) -> None:
            rows.append({"figure": figure, "unit": "", "archive": value, "orthanc": None, "ratio": None,
                         "limit_share": shown, "target": target_text,
                         "met": None if value is None else value >= target})

        fsync, read = lim.get("fsync_limit_mb_s"), lim.get("read_limit_mb_s")
        get = lim.get("loopback_get_mb_s")
        add("STOW-RS CT ingest (MB/s)", "stow_ct", "mb_s", "MB/s", target=1.3,
            limits=((fsync, "write+fsync"),))
        a_stow = self.fig(arc, "stow_ct", "mb_s")
        extra("  imaging-archive STOW-RS CT / write+fsync limit",
              a_stow / fsync if a_stow and fsync else None, 0.9,
              f"{fsync:.0f} MB/s limit" if fsync else "", ">= 90 % of the limit")
        add("STOW-RS tiny ingest (instances/s)", "stow_tiny_small", "instances_s", "inst/s", target=1.5)
        add("STOW-RS tiny, 2nd set up to the large size (inst/s)", "stow_tiny_large", "instances_s", "inst/s")
        add(f"C-STORE CT ingest, storescu x{self.sizes.clients} (MB/s)", "cstore", "mb_s", "MB/s",
            limits=((fsync, "write+fsync"),))
        a_cs = self.fig(arc, "cstore", "mb_s")
        extra("  imaging-archive C-STORE / own STOW-RS CT", a_cs / a_stow if a_cs and a_stow else None, 0.8,
              "", ">= 80 % of own STOW-RS")
        for key, size in (("qido_small", "small"), ("qido_large", "large")):
            n = self.index_sizes.get(key, 0)
            add(f"QIDO-RS p50 at {n:,} instances (ms)", key, "p50_ms", "ms", higher_better=False)
            add(f"QIDO-RS p95 at {n:,} instances (ms)", key, "p95_ms", "ms", higher_better=False,
                target=10 if size == "large" else None)
        big = self.ct.big_count
        add(f"/metadata of the {big}-instance series, median (ms)", "metadata", "median_ms", "ms",
            higher_better=False, target=10)
        add(f"/metadata of the {big}-instance series, first (ms)", "metadata", "first_ms", "ms",
            higher_better=False)
        add("series retrieve (MB/s)", "retrieve", "median_mb_s", "MB/s", target=2,
            limits=((get, "loopback GET"), (read, "disk read")))
        for key in ("frames_small", "frames_large"):
            n = self.index_sizes.get(key, 0)
            add(f"single-frame retrieve at {n:,} instances (frames/s)", key, "per_s", "frames/s", target=2)
        fs, fl = self.fig(arc, "frames_small", "per_s"), self.fig(arc, "frames_large", "per_s")
        extra("  imaging-archive frames/s large index / small index", fl / fs if fs and fl else None, 0.9, "",
              "not slower (>= 90 %, noise)")
        add("rendered JPEG 512x512 (images/s)", "rendered", "per_s", "images/s")
        add("server peak PSS through the run (MB)", "memory", "peak_pss_mb", "MB", higher_better=False)
        return rows

    def summarize(self, seconds: float) -> None:
        rows = self.rows()
        note = " (--quick: small sizes)" if self.args.quick else ""
        report.section("summary: imaging-archive vs Orthanc" + note)

        def num(v: float | None) -> str:
            if v is None:
                return "-"
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.2f}"
        table = []
        for r in rows:
            is_share = r["figure"].startswith("  imaging-archive")
            a = "-" if r["archive"] is None else (f"{r['archive']:.0%}" if is_share else num(r["archive"]))
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            verdict = "-" if r["met"] is None else ("met" if r["met"] else "MISSED")
            table.append((r["figure"], a, num(r["orthanc"]), ratio, r["limit_share"] or "", r["target"] or "",
                          verdict))
        print(report.table(table, ("figure", "imaging-archive", "Orthanc", "ratio", "share of limit",
                                   "target", "result")))
        print("  ratio: > 1 means imaging-archive is better (rates: archive/Orthanc; times: Orthanc/archive)")
        lim = self.limits
        if lim:
            print("  limits: write+fsync " + ", ".join(f"{lim[k]:.0f}" for k in lim if k.startswith("fsync_")
                                                      and k != "fsync_limit_mb_s")
                  + " MB/s (1, N writers); disk read " + ", ".join(
                      f"{lim[k]:.0f}" for k in lim if k.startswith("read_") and k != "read_limit_mb_s")
                  + f" MB/s (1, N readers); loopback GET {lim.get('loopback_get_mb_s', 0):.0f} MB/s")
        for note in self.notes:
            print(f"  note: {note}")
        load = (self.load_at_start, os.getloadavg()[0])
        print(f"  load average (1 min): {load[0]:.2f} at start, {load[1]:.2f} at end, {os.cpu_count()} CPUs; "
              f"total {seconds:.0f} s")
        ours = [p for p in self.problems if not p.startswith(ORTHANC + " ")]
        theirs = [p for p in self.problems if p.startswith(ORTHANC + " ")]
        print(f"\n{len(ours)} problem(s) of imaging-archive or the bench" + (":" if ours else ""))
        for p in ours:
            print(f"  - {p}")
        if theirs:
            print(f"{len(theirs)} wrong or failed answer(s) of Orthanc (listed; the exit code ignores them):")
            for p in theirs:
                print(f"  - {p}")
        if self.args.json:
            self.args.json.parent.mkdir(parents=True, exist_ok=True)
            self.args.json.write_text(json.dumps({
                "rows": rows, "figures": self.figures, "limits": self.limits, "index_sizes": self.index_sizes,
                "notes": self.notes, "problems": self.problems, "seconds": seconds,
                "run": {"quick": self.args.quick, "sizes": asdict(self.sizes), "cpus": os.cpu_count(),
                        "load_average_1min": load, "python": sys.version.split()[0],
                        "platform": platform.platform(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}},
                indent=2, default=str))
            print(f"figures written to {self.args.json}")


def main(argv: list[str] | None = None) -> int:
    return Versus(parse_args(argv)).run()


if __name__ == "__main__":
    raise SystemExit(main())
