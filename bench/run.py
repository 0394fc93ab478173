"""End-to-end benchmark of the imaging-archive DICOMweb server; prints measured figures beside targets.

    python bench/run.py                 # full run: 100,000 tiny instances + ~1 GB of CT (~5-15 min)
    python bench/run.py --quick         # smoke run: 2,000 tiny instances, ~160 MB of CT (< 1 min)
    python bench/run.py --instances 50000 --json bench/out/figures.json
    python bench/run.py --only stow_ct --parse-processes 1   # STOW CT only, one parse worker process
    python bench/run.py --only stow_ct,cstore,move           # STOW-RS vs C-STORE ingest, and C-MOVE

Steps, all in one run and all over 127.0.0.1:
 1. synthetic data (cached under ``<workdir>/cache``): a CT set of 512x512 slices plus one long series,
    and N tiny instances over many patients/studies/series (``datasets.py``);
 2. machine limits: write+fsync MB/s on the data dir's disk (1 and 4 writers) and plain-file HTTP GET
    MB/s over loopback (``limits.py``);
 3. the server (``python -m archive serve --config``) on a fresh data dir; the RSS sum and the PSS
    sum of it and its children sampled every 100 ms for the whole run;
 4. STOW-RS of the CT set (50 instances per request, 4 clients);
    then C-STORE (dcmtk ``storescu``) of two more CT sets of the same shape with UIDs of their own:
    one association, then 4 parallel associations (``dcmtk.py``); counted back by QIDO-RS;
 5. STOW-RS of the tiny set, then QIDO-RS latencies over a mixed query set (``qido.py``);
 6. WADO-RS /metadata of the long series (first run, median of the next runs);
 7. WADO-RS retrieve of the long series, streamed and counted (median of 3);
 8. C-MOVE (dcmtk ``movescu``) of a 500-instance study to a dcmtk ``storescp``;
 9. a summary against the targets, optionally written as JSON (``--json``).

``--only`` runs a subset of steps 4-8 (and only the data and limits they need).
Every answer is checked (status, counts); problems are listed at the end, never asserted.
MB = 10^6 bytes throughout.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
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
from procs import ManagedProcess, MemorySampler, ProcessError

REPO = Path(__file__).resolve().parent.parent
RETRIEVE_ACCEPT = httpclient.RETRIEVE_ACCEPT
TARGET_QIDO_P95_MS = 50.0
TARGET_METADATA_MS = 150.0
TARGET_STOW_SHARE = 0.90
TARGET_RETRIEVE_SHARE = 0.50
TARGET_MEMORY_MB = 200.0  # server peak PSS (with children)
TARGET_CSTORE_SHARE = 0.80  # C-STORE ingest vs STOW-RS CT: informative for now (a later issue's target)
ARCHIVE_AE, STORESCU_AE, MOVESCU_AE, SCP_AE = "IMAGING-ARCHIVE", "BENCHSCU", "BENCHMOVE", "BENCHSCP"
FSYNC_MAX_FILES = 8000  # caps the probe at ~4 GB of temporary files
# PSS costs ~1 ms of CPU per process per sample under load (~5 ms with a parse worker), in this
# process; 100 ms keeps that near 5% of one CPU.
MEMORY_INTERVAL_S = 0.1
# --only names -> the run's step names; a step's prerequisite is added when it is left out.
ONLY_STEPS = {"stow_ct": "stow_ct", "cstore": "cstore", "tiny": "stow_tiny", "qido": "qido",
              "metadata": "metadata", "retrieve": "retrieve", "move": "move"}
DIMSE_STEPS = {"cstore", "move"}
ONLY_NEEDS = {"qido": "tiny", "metadata": "stow_ct", "retrieve": "stow_ct"}


@dataclass
class Sizes:
    tiny: int
    ct_studies: int
    ct_series: int
    ct_slices: int
    big: int
    fsync_seconds: float
    plain_mb: int
    queries_per_kind: int
    metadata_runs: int
    retrieve_runs: int
    ct_batch: int
    tiny_batch: int
    clients: int
    cstore_studies: int  # each C-STORE set: studies x series x slices + one long series
    cstore_series: int
    cstore_slices: int
    cstore_big: int
    move_instances: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke run (~1-2 min)")
    p.add_argument("--instances", type=int, help="tiny instances for the index-scale step "
                   "(default 100000, 2000 with --quick)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/imaging-archive-bench"),
                   help="cache and throw-away server data (default /tmp/imaging-archive-bench)")
    p.add_argument("--port", type=int, default=18080, help="archive server port (default 18080)")
    p.add_argument("--file-port", type=int, default=18081, help="plain file server port (default 18081)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    p.add_argument("--clients", type=int, default=4, help="concurrent STOW clients (default 4)")
    p.add_argument("--tiny-batch", type=int, default=100, help="tiny instances per STOW request")
    p.add_argument("--queries-per-kind", type=int, help="QIDO queries per kind (default 50, 20 quick)")
    p.add_argument("--repo", type=Path, default=REPO, help="folder the server runs from (default: this repo)")
    p.add_argument("--keep-data", action="store_true", help="keep the server data dir after the run")
    p.add_argument("--disable-dimse", action="store_true",
                   help="write [dimse] enabled = false (the cstore and move steps are skipped)")
    p.add_argument("--dimse-port", type=int, default=18104, help="archive DIMSE port (default 18104)")
    p.add_argument("--scp-port", type=int, default=18105,
                   help="port of the C-MOVE destination, dcmtk storescp as BENCHSCP (default 18105)")
    p.add_argument("--scp-ignore", action="store_true",
                   help="storescp --ignore: the C-MOVE destination receives but writes nothing "
                   "(default: it writes the files to the run's data dir, without fsync)")
    p.add_argument("--parse-processes", type=int, metavar="N",
                   help="write [ingest] parse_processes = N (0 = parse in threads, 1 = one worker "
                   "process; default: not written, the server's default)")
    p.add_argument("--only", metavar="STEPS",
                   help=f"run only these steps, comma-separated among {', '.join(ONLY_STEPS)} "
                   "(qido needs tiny, metadata and retrieve need stow_ct: added when missing; "
                   "cstore and move need neither)")
    args = p.parse_args(argv)
    try:
        resolve_only(args.only)
    except ValueError as exc:
        p.error(str(exc))
    return args


def resolve_only(text: str | None) -> tuple[list[str], list[str]]:
    """(--only names to run in run order, notes on prerequisites added); every step without --only."""
    if text is None:
        return list(ONLY_STEPS), []
    asked = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in asked if name not in ONLY_STEPS]
    if unknown or not asked:
        raise ValueError(f"--only: unknown step(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose among {', '.join(ONLY_STEPS)}")
    chosen, notes = set(asked), []
    for name in ONLY_STEPS:
        need = ONLY_NEEDS.get(name)
        if name in chosen and need is not None and need not in chosen:
            chosen.add(need)
            notes.append(f"{name} needs {need}: {need} added")
    return [name for name in ONLY_STEPS if name in chosen], notes


def sizes_from(args: argparse.Namespace) -> Sizes:
    quick = args.quick
    return Sizes(
        tiny=args.instances or (2_000 if quick else 100_000),
        ct_studies=2 if quick else 10, ct_series=1 if quick else 2, ct_slices=50,
        big=200 if quick else 1000,
        fsync_seconds=2.0 if quick else 4.0, plain_mb=128 if quick else 256,
        queries_per_kind=args.queries_per_kind or (20 if quick else 50),
        metadata_runs=10, retrieve_runs=3, ct_batch=50, tiny_batch=args.tiny_batch, clients=args.clients,
        # C-STORE sets: the full STOW-RS CT shape (2,000 instances, ~1 GB each); quick: 50 + 50 slices
        cstore_studies=1 if quick else 10, cstore_series=1 if quick else 2, cstore_slices=50,
        cstore_big=50 if quick else 1000, move_instances=100 if quick else 500)


def require_free_port(port: int) -> None:
    """Refuse a busy port: a health check could otherwise reach some other server. SO_REUSEADDR as
    the servers set it: connections of a previous run left in TIME-WAIT do not count, a listener does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ProcessError(f"port {port} on 127.0.0.1 is already in use") from exc


def file_batches(files: list[Path], size: int) -> Iterator[list[bytes]]:
    for i in range(0, len(files), size):
        yield [p.read_bytes() for p in files[i:i + size]]


def warm_page_cache(files: list[Path]) -> None:
    """Read the files once so the timed upload does not wait on the client's disk."""
    for path in files:
        with path.open("rb") as fh:
            while fh.read(8 << 20):
                pass


def progress_printer(label: str, total: int, every: float = 10.0) -> Callable[[httpclient.StowResult], None]:
    start, last = time.monotonic(), [time.monotonic()]

    def show(r: httpclient.StowResult) -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            print(f"  {label}: {r.instances:,}/{total:,} instances, {now - start:.0f} s", flush=True)
    return show


def server_config(run_dir: Path, port: int, disable_dimse: bool, parse_processes: int | None = None,
                  dimse_port: int = 18104, scp_port: int = 18105) -> str:
    files, db = json.dumps(str(run_dir / "files")), json.dumps(f"sqlite+aiosqlite:///{run_dir / 'index.db'}")
    text = (f'[http]\nhost = "127.0.0.1"\nport = {port}\n[storage]\npath = {files}\n[database]\nurl = {db}\n'
            '[qido]\nmax_results = 100000\n[log]\nlevel = "warning"\n')
    if parse_processes is not None:
        text += f"[ingest]\nparse_processes = {parse_processes}\n"
    if disable_dimse:
        return text + "[dimse]\nenabled = false\n"
    # the C-MOVE destination is the dcmtk storescp the move step starts
    return text + (f'[dimse]\nenabled = true\nhost = "127.0.0.1"\nport = {dimse_port}\n'
                   f'ae_title = "{ARCHIVE_AE}"\n'
                   f'[dimse.peers.bench]\nae_title = "{SCP_AE}"\nhost = "127.0.0.1"\nport = {scp_port}\n')


class Bench:
    """Holds the run's state; each step records its figures in ``self.figures``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.sizes = args, sizes_from(args)
        self.run_dir = args.workdir / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
        self.base = f"http://127.0.0.1:{args.port}/dicom-web"
        self.figures: dict[str, Any] = {}
        self.problems: list[str] = []
        self.server: ManagedProcess | None = None
        self.sampler: MemorySampler | None = None
        self.ct: datasets.CtSet | None = None
        self.tiny: datasets.TinySet | None = None
        self.cstore_sets: list[datasets.CtSet] = []  # one association, parallel associations
        self.move_set: datasets.CtSet | None = None
        self.extra_studies: list[datasets.StudyRecord] = []  # stored besides the CT and tiny sets
        only, self.only_notes = resolve_only(args.only)
        self.selected = {ONLY_STEPS[name] for name in only}
        self.dimse_skipped = self.selected & DIMSE_STEPS if args.disable_dimse else set()
        self.selected -= self.dimse_skipped
        self.load_at_start = os.getloadavg()[0]

    @property
    def ct_data(self) -> datasets.CtSet:
        if self.ct is None:
            raise RuntimeError("the CT set was not prepared")
        return self.ct

    @property
    def move_data(self) -> datasets.CtSet:
        if self.move_set is None:
            raise RuntimeError("the C-MOVE study was not prepared")
        return self.move_set

    @property
    def tiny_data(self) -> datasets.TinySet:
        if self.tiny is None:
            raise RuntimeError("the tiny set was not prepared")
        return self.tiny

    # ------------------------------------------------------------------------------------ steps

    def prepare_data(self) -> None:
        report.section("1. synthetic data")
        s, cache = self.sizes, self.args.workdir / "cache"
        out = self.figures.setdefault("data", {})
        if "stow_ct" in self.selected:
            self.ct = ct = datasets.ct_set(cache, s.ct_studies, s.ct_series, s.ct_slices, s.big)
            print(f"  CT: {len(ct.files):,} instances, {ct.total_bytes / 1e6:.0f} MB "
                  f"({s.ct_studies} studies x {s.ct_series} series x {s.ct_slices} + one {s.big}-slice "
                  f"series, {ct.total_bytes / len(ct.files) / 1e3:.0f} kB each)")
            out.update({"ct_instances": len(ct.files), "ct_bytes": ct.total_bytes,
                        "big_series_instances": ct.big_count, "big_series_bytes": ct.big_bytes})
        if "stow_tiny" in self.selected:
            self.tiny = tiny = datasets.tiny_set(cache, s.tiny)
            series = sum(len(st.series) for st in tiny.studies)
            patients = len({st.patient_id for st in tiny.studies})
            print(f"  tiny: {tiny.count:,} instances, {tiny.total_bytes / 1e6:.0f} MB, "
                  f"{len(tiny.studies):,} studies, {series:,} series, {patients:,} patients")
            out.update({"tiny_instances": tiny.count, "tiny_bytes": tiny.total_bytes,
                        "tiny_studies": len(tiny.studies), "tiny_series": series})
        if "cstore" in self.selected:  # UIDs of their own: a copy of the STOW set would be a duplicate
            shape = (s.cstore_studies, s.cstore_series, s.cstore_slices, s.cstore_big)
            self.cstore_sets = [datasets.ct_set(cache, *shape, tag=tag) for tag in ("cstore1", "cstoren")]
            one = self.cstore_sets[0]
            print(f"  C-STORE: 2 CT sets (1 association; {s.clients} associations) of {len(one.files):,} "
                  f"instances, {one.total_bytes / 1e6:.0f} MB each ({shape[0]} studies x {shape[1]} series "
                  f"x {shape[2]} + one {shape[3]}-slice series), UIDs of their own")
            out.update({"cstore_set_instances": len(one.files), "cstore_set_bytes": one.total_bytes})
        if "move" in self.selected:
            self.move_set = mv = datasets.ct_set(cache, 0, 0, 0, s.move_instances, tag="move")
            print(f"  C-MOVE: one study of {len(mv.files):,} CT instances, {mv.total_bytes / 1e6:.0f} MB")
            out.update({"move_instances": len(mv.files), "move_bytes": mv.total_bytes})
        if self.dimse_skipped:
            print(f"  --disable-dimse: {', '.join(sorted(self.dimse_skipped))} skipped")

    def measure_limits(self) -> None:
        report.section("2. machine limits")
        rows: list[tuple[str, str, str, str]] = []
        out: dict[str, Any] = {}
        if "stow_ct" in self.selected:  # the write+fsync limit is the STOW CT reference
            file_bytes = round(self.ct_data.total_bytes / len(self.ct_data.files))
            probe = self.run_dir / "fsync-probe"
            for writers in (1, self.sizes.clients):
                r = limits.fsync_probe(probe, file_bytes, writers, self.sizes.fsync_seconds, FSYNC_MAX_FILES)
                rows.append((f"write+fsync+rename, {writers} writer(s)", f"{r.mb_per_s:.1f} MB/s",
                             f"{r.files_per_s:.0f} files/s", f"{r.files} x {file_bytes / 1e3:.0f} kB"))
                out[f"fsync_{writers}_writers_mb_s"] = r.mb_per_s
            out["fsync_limit_mb_s"] = max(out.values())
        if "retrieve" in self.selected:  # the loopback GET is the retrieve reference
            require_free_port(self.args.file_port)
            plain = limits.loopback_get(self.run_dir / "plain", self.sizes.plain_mb * 10**6,
                                        self.args.file_port, self.sizes.retrieve_runs)
            runs = ", ".join(f"{d.mb_per_s:.0f}" for d in plain.runs)
            rows.append(("plain-file HTTP GET over loopback", f"{plain.median_mb_per_s:.1f} MB/s",
                         f"median of {len(plain.runs)}", f"{self.sizes.plain_mb} MB file; runs {runs}"))
            out["loopback_get_mb_s"] = plain.median_mb_per_s
            out["loopback_get_runs_mb_s"] = [d.mb_per_s for d in plain.runs]
        if rows:
            print(report.table(rows, ("limit", "rate", "", "detail")))
        else:
            print("  none needed by the selected steps")
        self.figures["limits"] = out

    def start_server(self) -> None:
        report.section("3. archive server")
        require_free_port(self.args.port)
        config = self.run_dir / "archive.toml"
        pp = self.args.parse_processes
        a = self.args
        dimse_steps = self.selected & DIMSE_STEPS
        if not a.disable_dimse:
            require_free_port(a.dimse_port)
        if "move" in dimse_steps:
            require_free_port(a.scp_port)
        config.write_text(server_config(self.run_dir, a.port, a.disable_dimse, pp, a.dimse_port, a.scp_port))
        argv = [sys.executable, "-m", "archive", "serve", "--config", str(config)]
        self.server = ManagedProcess("archive server", argv, self.args.repo, self.run_dir / "server.log",
                                     f"http://127.0.0.1:{self.args.port}/healthz")
        started = time.perf_counter()
        self.server.start(timeout=60)
        self.sampler = MemorySampler(self.server.pid, MEMORY_INTERVAL_S)
        self.sampler.set_phase("server")
        self.sampler.sample()
        self.sampler.start()
        ready = time.perf_counter() - started
        print(f"  `{' '.join(argv[1:])}` ready in {ready:.1f} s (pid {self.server.pid}), "
              f"data in {self.run_dir}")
        print(f"  [ingest] parse_processes = {pp if pp is not None else '(not set: server default)'}")
        self.figures["server"] = {"startup_s": ready, "parse_processes": pp}
        if a.disable_dimse:
            print("  [dimse] enabled = false")
            return
        print(f"  [dimse] {ARCHIVE_AE} on 127.0.0.1:{a.dimse_port}; C-MOVE peer {SCP_AE} at "
              f"127.0.0.1:{a.scp_port}")
        if dimse_steps:
            try:
                dcmtk.wait_for_port(a.dimse_port, 15)
                tools = ["storescu"] if "cstore" in dimse_steps else []
                tools += ["movescu", "storescp"] if "move" in dimse_steps else []
                print(f"  dcmtk: {'; '.join(f'{dcmtk.tool(t)} ({dcmtk.version(t)})' for t in tools)}")
            except dcmtk.DcmtkError as exc:  # the DIMSE steps then fail on their own; the rest goes on
                self.problems.append(f"DIMSE: {exc}")

    def _stow(self, label: str, batches: Iterator[list[bytes]], total: int) -> httpclient.StowResult:
        result = asyncio.run(httpclient.stow(f"{self.base}/studies", batches, self.sizes.clients,
                                             progress_printer(label, total)))
        for f in result.failures[:5]:
            self.problems.append(f"{label}: POST /dicom-web/studies batch #{f.batch} -> {f.status}: "
                                 f"{f.detail}")
        if len(result.failures) > 5:
            self.problems.append(f"{label}: ... {len(result.failures) - 5} more failed requests")
        print(f"  {result.instances:,} instances in {result.requests} requests, {result.seconds:.1f} s: "
              f"{result.instances_per_s:,.0f} instances/s, {result.mb_per_s:.1f} MB/s, "
              f"{result.requests - len(result.failures)}/{result.requests} requests 200 and complete")
        return result

    def stow_ct(self) -> None:
        report.section(f"4. STOW-RS CT ({self.sizes.ct_batch} per request, {self.sizes.clients} clients)")
        files = self.ct_data.files
        warm_page_cache(files)
        r = self._stow("STOW CT", file_batches(files, self.sizes.ct_batch), len(files))
        self.figures["stow_ct"] = _stow_dict(r)

    def _study_counts(self, studies: list[datasets.StudyRecord]) -> list[str]:
        """QIDO-RS each study; what differs from the catalog (NumberOfStudyRelatedInstances)."""
        wrong: list[str] = []
        with requests.Session() as http:
            for study in studies:
                resp = http.get(f"{self.base}/studies", params={"StudyInstanceUID": study.uid},
                                headers={"Accept": httpclient.DICOM_JSON}, timeout=60)
                got: Any = 0
                if resp.status_code == 200:
                    objs = resp.json()
                    got = objs[0].get("00201208", {}).get("Value", ["?"])[0] if len(objs) == 1 else \
                        f"{len(objs)} studies"
                elif resp.status_code != 204:
                    got = f"HTTP {resp.status_code}"
                if str(got) != str(study.instances):
                    wrong.append(f"study {study.uid}: {got} instances, {study.instances} expected")
        return wrong

    def cstore(self) -> None:
        s, n = self.sizes, self.sizes.clients
        report.section(f"4b. C-STORE CT with dcmtk storescu (1 association, then {n} parallel associations)")
        log_dir = self.args.workdir / "last-dcmtk-logs"
        shutil.rmtree(log_dir, ignore_errors=True)
        out: dict[str, Any] = {}
        for key, data, assoc in (("one_association", self.cstore_sets[0], 1),
                                 ("parallel", self.cstore_sets[1], n)):
            warm_page_cache(data.files)
            folders = ([data.files[0].parent] if assoc == 1 else
                       dcmtk.link_folders(data.files, assoc, self.run_dir / "cstore-links"))
            r = dcmtk.store(folders, len(data.files), data.total_bytes, self.args.dimse_port, ARCHIVE_AE,
                            STORESCU_AE, log_dir)
            self.extra_studies += data.studies
            label = f"C-STORE {assoc} association(s)"
            if r.succeeded != len(data.files) or any(r.exit_codes):
                others = ", ".join(f"{k} x{v}" for k, v in r.statuses.items() if k != "Success") or "none"
                self.problems.append(
                    f"{label}: {r.succeeded}/{len(data.files)} store responses Success (other responses: "
                    f"{others}); storescu exit codes {r.exit_codes}; {dcmtk.log_excerpt(r.logs[0])} "
                    f"(logs in {log_dir}, server log {self.args.workdir / 'last-server.log'})")
            wrong = self._study_counts(data.studies)
            for problem in wrong[:5]:
                self.problems.append(f"{label}: QIDO-RS after C-STORE: {problem}")
            print(f"  {assoc} association(s): {len(data.files):,} instances, "
                  f"{data.total_bytes / 1e6:.0f} MB in {r.seconds:.1f} s: "
                  f"{r.instances_per_s:,.1f} instances/s, {r.mb_per_s:.1f} MB/s; "
                  f"{r.succeeded:,}/{len(data.files):,} responses Success; QIDO-RS: "
                  f"{len(data.studies) - len(wrong)}/{len(data.studies)} studies complete")
            out[key] = {"associations": assoc, "instances": len(data.files), "bytes": data.total_bytes,
                        "seconds": r.seconds, "instances_s": r.instances_per_s, "mb_s": r.mb_per_s,
                        "success": r.succeeded, "statuses": dict(r.statuses), "exit_codes": r.exit_codes,
                        "studies": len(data.studies), "studies_incomplete_by_qido": len(wrong)}
        stow = self.figures.get("stow_ct")
        if stow:
            out["stow_ct_mb_s"], out["stow_ct_instances_s"] = stow["mb_s"], stow["instances_s"]
            for key in ("one_association", "parallel"):
                out[key]["vs_stow_ct"] = out[key]["mb_s"] / stow["mb_s"] if stow["mb_s"] else None
            rows = [(f"STOW-RS CT ({s.ct_batch} per request, {s.clients} clients)",
                     f"{stow['instances_s']:,.1f}", f"{stow['mb_s']:.1f}", "")]
            rows += [(f"C-STORE CT, {out[k]['associations']} association(s)", f"{out[k]['instances_s']:,.1f}",
                      f"{out[k]['mb_s']:.1f}", f"{out[k]['vs_stow_ct']:.0%}")
                     for k in ("one_association", "parallel")]
            print(report.table(rows, ("ingest (same run)", "instances/s", "MB/s", "vs STOW")))
            print(f"  (informative target for later: C-STORE >= {TARGET_CSTORE_SHARE:.0%} of STOW-RS)")
        else:
            print("  STOW-RS CT not run (--only): no C-STORE/STOW-RS ratio")
        self.figures["cstore"] = out

    def move(self) -> None:
        mv, a = self.move_data, self.args
        n = len(mv.files)
        report.section(f"8. C-MOVE of a {n}-instance study with dcmtk movescu to storescp")
        batches = file_batches(mv.files, self.sizes.ct_batch)
        stow = self._stow("STOW-RS of the study (set-up, not timed)", batches, n)
        self.extra_studies += mv.studies
        for problem in self._study_counts(mv.studies):
            self.problems.append(f"move: QIDO-RS before C-MOVE: {problem}")
        log_dir = a.workdir / "last-dcmtk-logs"
        r = dcmtk.move(mv.big_study_uid, n, mv.total_bytes, a.dimse_port, ARCHIVE_AE, SCP_AE, a.scp_port,
                       self.run_dir / "move-dest", a.scp_ignore, log_dir, MOVESCU_AE)
        counts = f"completed {r.completed}, failed {r.failed}, warning {r.warning}"
        arrived = r.received if r.files_written is None else r.files_written
        if (r.exit_code != 0 or not r.status.startswith("0x0000") or r.completed != n or r.failed
                or arrived != n):
            self.problems.append(
                f"move: movescu exit {r.exit_code}, final status {r.status or '(none seen)'}, {counts}; "
                f"{arrived}/{n} instances arrived at storescp; {dcmtk.log_excerpt(r.log)} "
                f"(logs in {log_dir}, server log {a.workdir / 'last-server.log'})")
        print(f"  destination: dcmtk storescp as {SCP_AE} on 127.0.0.1:{a.scp_port}, data {r.destination}")
        print(f"  {n:,} instances, {mv.total_bytes / 1e6:.0f} MB in {r.seconds:.2f} s: "
              f"{r.instances_per_s:,.1f} instances/s, {r.mb_per_s:.1f} MB/s; "
              f"final C-MOVE status {r.status or '(none seen)'} "
              f"({counts}); storescp received {r.received:,}"
              + ("" if r.files_written is None else f", wrote {r.files_written:,} files"))
        self.figures["move"] = {
            "instances": n, "bytes": mv.total_bytes, "seconds": r.seconds, "instances_s": r.instances_per_s,
            "mb_s": r.mb_per_s, "status": r.status, "completed": r.completed, "failed": r.failed,
            "warning": r.warning, "received": r.received, "files_written": r.files_written,
            "destination_writes_files": r.files_written is not None, "stow_setup_s": stow.seconds}

    def stow_tiny(self) -> None:
        s = self.sizes
        report.section(f"5a. STOW-RS tiny ({s.tiny_batch} per request, {s.clients} clients)")
        r = self._stow("STOW tiny", self.tiny_data.batches(s.tiny_batch), self.tiny_data.count)
        self.figures["stow_tiny"] = _stow_dict(r)

    def query(self) -> None:
        tiny = self.tiny_data
        stored, total = list(tiny.studies), tiny.count  # the catalog is what this run stored
        if "stow_ct" in self.selected:
            stored, total = self.ct_data.studies + stored, total + len(self.ct_data.files)
        stored, total = self.extra_studies + stored, total + sum(st.instances for st in self.extra_studies)
        report.section(f"5b. QIDO-RS at {total:,} instances ({self.sizes.queries_per_kind} queries per kind, "
                       "sequential)")
        result = qido.measure(self.base, tiny.studies, stored, self.sizes.queries_per_kind)
        self.figures["qido"] = _qido_dict(result, total)
        kinds = self.figures["qido"]["kinds"]
        rows = [(k, len(v["ms"]), f"{v['p50_ms']:.1f}", f"{v['p95_ms']:.1f}", f"{v['max_ms']:.1f}",
                 f"{v['mean_results']:.1f}") for k in qido.KINDS if (v := kinds.get(k))]
        o = self.figures["qido"]["overall"]
        rows.append(("overall", o["queries"], f"{o['p50_ms']:.1f}", f"{o['p95_ms']:.1f}",
                     f"{o['max_ms']:.1f}", ""))
        print(report.table(rows, ("query kind", "n", "p50 ms", "p95 ms", "max ms", "avg results")))
        print(f"  {len(result.failures)} answers wrong or not 200/204; {result.empty} answered 204")
        for f in result.failures[:8]:
            self.problems.append(f"QIDO {f.kind}: GET /dicom-web{f.path} -> {f.status}: {f.detail}")
        if len(result.failures) > 8:
            self.problems.append(f"QIDO: ... {len(result.failures) - 8} more wrong answers")

    def metadata(self) -> None:
        ct = self.ct_data
        n, runs = ct.big_count, self.sizes.metadata_runs
        report.section(f"6. WADO-RS /metadata of the {n}-instance series (first run + {runs})")
        path = f"/studies/{ct.big_study_uid}/series/{ct.big_series_uid}/metadata"
        answers = asyncio.run(httpclient.get_many(self.base + path, runs + 1))
        for status, _, body in (answers[0], answers[-1]):
            problem = httpclient.check_metadata(status, body, n)
            if problem:
                self.problems.append(f"metadata: GET /dicom-web{path} -> {status}: {problem}")
        first_ms, rest_ms = answers[0][1] * 1000, [a[1] * 1000 for a in answers[1:]]
        out = {"instances": n, "first_ms": first_ms, "median_ms": report.median(rest_ms), "runs_ms": rest_ms,
               "bytes": len(answers[-1][2])}
        print(f"  first {first_ms:.1f} ms, median {out['median_ms']:.1f} ms (min {min(rest_ms):.1f}, "
              f"max {max(rest_ms):.1f}), {out['bytes'] / 1e6:.2f} MB of JSON")
        self.figures["metadata"] = out

    def retrieve(self) -> None:
        ct, runs = self.ct_data, self.sizes.retrieve_runs
        report.section(f"7. WADO-RS retrieve of the {ct.big_count}-instance series "
                       f"({ct.big_bytes / 1e6:.0f} MB; 1 checked run + {runs} timed)")
        url = f"{self.base}/studies/{ct.big_study_uid}/series/{ct.big_series_uid}"
        check, timed = asyncio.run(httpclient.retrieve_runs(url, runs))
        problem = _check_retrieve(check, ct.big_count, ct.big_bytes)
        if problem:
            self.problems.append(f"retrieve: GET {url.split('/dicom-web')[1]} (Accept: {RETRIEVE_ACCEPT}) -> "
                                 f"{check.status}: {problem}")
        rates = [d.mb_per_s for d in timed]
        out = {"instances": ct.big_count, "bytes": check.bytes, "parts": check.parts,
               "checked_run_mb_s": check.mb_per_s, "median_mb_s": report.median(rates), "runs_mb_s": rates}
        print(f"  {check.bytes / 1e6:.0f} MB in {check.parts} parts; checked run {check.mb_per_s:.1f} MB/s; "
              f"timed runs {', '.join(f'{r:.1f}' for r in rates)} MB/s; median {out['median_mb_s']:.1f} MB/s")
        self.figures["retrieve"] = out

    # ---------------------------------------------------------------------------------- driver

    def step(self, name: str, fn: Callable[[], None]) -> bool:
        """Run one step; record an exception or a dead server as a problem. False stops the run."""
        if self.sampler is not None:
            self.sampler.set_phase(name)
        started, failed = time.perf_counter(), False
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a failed step is reported; the run goes on if it can
            failed = True
            self.problems.append(f"step {name} failed: {type(exc).__name__}: {exc}")
        self.figures.setdefault("step_seconds", {})[name] = time.perf_counter() - started
        if self.sampler is not None:  # a step shorter than the interval still gets one sample
            self.sampler.sample()
        if self.server is not None and not self.server.alive():
            tail = "" if failed and name == "server" else f"; log tail:\n{self.server.log_tail()}"
            code = self.server.exit_code()
            self.problems.append(f"archive server exited with code {code} during {name}{tail}")
            return False
        return not (failed and name in ("data", "server"))

    def run(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.args.only is not None:
            names = [k for k, v in ONLY_STEPS.items() if v in self.selected]
            added = f" ({'; '.join(self.only_notes)})" if self.only_notes else ""
            print(f"--only: running {', '.join(names)}{added}")
        steps: list[tuple[str, Callable[[], None]]] = [
            ("data", self.prepare_data), ("limits", self.measure_limits), ("server", self.start_server),
            ("stow_ct", self.stow_ct), ("cstore", self.cstore), ("stow_tiny", self.stow_tiny),
            ("qido", self.query), ("metadata", self.metadata), ("retrieve", self.retrieve),
            ("move", self.move)]
        try:
            for name, fn in steps:
                if name in ONLY_STEPS.values() and name not in self.selected:
                    continue
                if not self.step(name, fn):
                    break
        finally:
            self.shutdown()
        self.summarize()
        return 0 if not self.problems else 1

    def shutdown(self) -> None:
        if self.sampler is not None:
            sampler = self.sampler
            sampler.stop()
            # RSS sum: shared pages of forked children counted once per process; PSS sum: split.
            self.figures["rss"] = {"peak_mb": sampler.peak.rss / 1e6, "samples": sampler.samples,
                                   "peak_by_step_mb": {k: v.rss / 1e6 for k, v in sampler.peaks.items()}}
            self.figures["pss"] = ({"peak_mb": sampler.peak.pss / 1e6,
                                    "peak_by_step_mb": {k: v.pss / 1e6 for k, v in sampler.peaks.items()}}
                                   if sampler.has_pss else {"peak_mb": None, "peak_by_step_mb": {}})
            self.figures["memory_sampling"] = {
                "interval_s": sampler.interval, "samples": sampler.samples,
                "mean_sample_ms": sampler.mean_sample_ms, "mean_sample_cpu_ms": sampler.mean_sample_cpu_ms,
                "max_processes": sampler.max_processes,
                "pss_available": sampler.has_pss}
        if self.server is not None and self.server.alive():
            code = self.server.stop()
            if code not in (0, None, -15):
                self.problems.append(f"archive server exit code on SIGTERM: {code}")
        if self.server is not None and self.server.log_path.exists():
            shutil.copy(self.server.log_path, self.args.workdir / "last-server.log")
        if not self.args.keep_data:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def targets(self) -> list[report.Target]:
        f, n = self.figures, self.sizes
        lim = f.get("limits", {})
        qido_p95 = f.get("qido", {}).get("overall", {}).get("p95_ms")
        meta = f.get("metadata", {}).get("median_ms")
        stow = f.get("stow_ct", {}).get("mb_s")
        retr = f.get("retrieve", {}).get("median_mb_s")
        rss, pss = f.get("rss", {}).get("peak_mb"), f.get("pss", {}).get("peak_mb")
        cstore, move = f.get("cstore", {}), f.get("move", {})
        total = f.get("qido", {}).get("instances", n.tiny + f.get("data", {}).get("ct_instances", 0))
        if pss is not None or rss is None:
            memory = report.at_most("server peak PSS (with children)", pss, TARGET_MEMORY_MB, "MB",
                                    note="" if rss is None else f"(RSS sum {rss:.1f} MB)")
        else:  # no PSS on this platform: fall back to the RSS sum
            memory = report.at_most("server peak RSS sum (with children; no PSS here)", rss,
                                    TARGET_MEMORY_MB, "MB")
        targets = [
            ("qido", report.at_most(f"QIDO p95, all kinds ({total:,} instances)", qido_p95,
                                    TARGET_QIDO_P95_MS, "ms")),
            ("metadata", report.at_most(f"/metadata median ({n.big} instances)", meta, TARGET_METADATA_MS,
                                        "ms")),
            ("stow_ct", report.ratio_at_least("STOW CT MB/s vs write+fsync limit", stow,
                                              lim.get("fsync_limit_mb_s"), TARGET_STOW_SHARE, "MB/s")),
            ("retrieve", report.ratio_at_least("series retrieve MB/s vs loopback GET", retr,
                                               lim.get("loopback_get_mb_s"), TARGET_RETRIEVE_SHARE, "MB/s")),
            ("server", memory),
        ]
        for key, what in (("one_association", "1 association"), ("parallel", f"{n.clients} associations")):
            c = cstore.get(key, {})
            targets.append(("cstore", report.informative_ratio(
                f"C-STORE CT ({what}) MB/s vs STOW-RS CT", c.get("mb_s"), cstore.get("stow_ct_mb_s"),
                TARGET_CSTORE_SHARE, "MB/s", "STOW-RS CT",
                f"{c['instances_s']:,.1f} instances/s" if c else "")))
        targets.append(("move", report.figure(
            f"C-MOVE of a {n.move_instances}-instance study, MB/s", move.get("mb_s"), "MB/s",
            f"{move['instances_s']:,.1f} instances/s" if move else "")))

        def shown(step: str, t: report.Target) -> report.Target:
            if step == "server" or step in self.selected:
                return t
            why = "--disable-dimse" if step in self.dimse_skipped else "--only"
            return dataclasses.replace(t, shown=f"skipped ({why})", value=None, passed=None)
        return [shown(step, t) for step, t in targets]

    def summarize(self) -> None:
        targets = self.targets()
        note = " (--quick: smaller sizes than the targets assume)" if self.args.quick else ""
        report.section("summary" + note)
        report.print_targets(targets)
        rss = self.figures.get("rss", {}).get("peak_by_step_mb", {})
        pss = self.figures.get("pss", {}).get("peak_by_step_mb", {})
        if rss:
            steps = ", ".join(f"{k} {pss[k]:.0f}/{v:.0f}" if k in pss else f"{k} -/{v:.0f}"
                              for k, v in rss.items())
            print(f"  peak PSS/RSS sum by step, MB: {steps}")
            m = self.figures["memory_sampling"]
            print(f"  memory sampled every {m['interval_s'] * 1000:.0f} ms: {m['samples']:,} samples, "
                  f"{m['mean_sample_ms']:.2f} ms wall / {m['mean_sample_cpu_ms']:.2f} ms CPU each on "
                  f"average, up to {m['max_processes']} process(es)")
        load = (self.load_at_start, os.getloadavg()[0])
        print(f"  load average (1 min): {load[0]:.2f} at start, {load[1]:.2f} at end, {os.cpu_count()} CPUs "
              "(other busy processes make every figure noisier and lower)")
        self.figures["load_average_1min"] = {"start": load[0], "end": load[1]}
        print(f"\n{len(self.problems)} problem(s)" + (":" if self.problems else ""))
        for problem in self.problems:
            print(f"  - {problem}")
        self.figures["targets"] = [t.as_dict() for t in targets]
        self.figures["problems"] = self.problems
        self.figures["run"] = _run_info(self.args, self.sizes)
        if self.args.json:
            self.args.json.parent.mkdir(parents=True, exist_ok=True)
            self.args.json.write_text(json.dumps(self.figures, indent=2))
            print(f"figures written to {self.args.json}")


def _stow_dict(r: httpclient.StowResult) -> dict[str, Any]:
    return {"instances": r.instances, "requests": r.requests, "bytes": r.bytes, "seconds": r.seconds,
            "instances_s": r.instances_per_s, "mb_s": r.mb_per_s, "failed_requests": len(r.failures)}


def _qido_dict(result: qido.QidoResult, total: int) -> dict[str, Any]:
    kinds = {}
    for kind, ms in result.latencies_ms.items():
        counts = result.results[kind]
        kinds[kind] = {"ms": ms, "p50_ms": report.percentile(ms, 50), "p95_ms": report.percentile(ms, 95),
                       "max_ms": max(ms), "mean_results": sum(counts) / len(counts)}
    every = [v for ms in result.latencies_ms.values() for v in ms]
    overall = {"queries": len(every), "p50_ms": report.percentile(every, 50),
               "p95_ms": report.percentile(every, 95), "max_ms": max(every, default=float("nan"))}
    return {"instances": total, "kinds": kinds, "overall": overall, "wrong_answers": len(result.failures),
            "empty_204": result.empty, "failures": [asdict(f) for f in result.failures[:50]]}


def _check_retrieve(d: httpclient.Download, parts: int, min_bytes: int) -> str | None:
    if d.status != 200:
        return d.head[:300].decode("utf-8", "replace")
    if not d.content_type.startswith("multipart/related"):
        return f"Content-Type {d.content_type!r}"
    if d.parts != parts or d.bytes < min_bytes:
        return f"{d.parts} parts / {d.bytes:,} bytes, expected {parts} parts / >= {min_bytes:,} bytes"
    return None


def _run_info(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    only, notes = resolve_only(args.only)
    dimse = {"disabled": args.disable_dimse, "port": args.dimse_port, "scp_port": args.scp_port,
             "move_destination_writes_files": not args.scp_ignore,
             "dcmtk": dcmtk.checked_versions()}
    return {"quick": args.quick, "sizes": asdict(sizes), "only": only if args.only is not None else None,
            "only_added": notes, "parse_processes": args.parse_processes, "dimse": dimse,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "platform": platform.platform(), "workdir": str(args.workdir),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    code = Bench(args).run()
    print(f"total time {time.perf_counter() - started:.0f} s")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
