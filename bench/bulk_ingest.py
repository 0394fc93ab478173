"""Bulk ingest from local disk beside the network ways in, same data, same run (issue 9).

    python bench/bulk_ingest.py --quick      # 300 CT slices (~158 MB), about a minute
    python bench/bulk_ingest.py              # 2,000 CT slices (~1.05 GB)
    python bench/bulk_ingest.py --json bench/out/bulk.json

The synthetic CT set of ``run.py`` and ``versus.py`` (``datasets.ct_set``: 512x512 16-bit slices of
0.5 MB, Explicit VR Little Endian, one long series), read once beforehand so every way reads it from
the page cache, is stored three ways, each into a fresh archive (its own data folder and index):

1. ``imaging-archive ingest DIR --report R`` (the command as an operator runs it). Two figures: the
   whole command from start to exit (Python start, opening the archive, scanning the folder
   included), and the ingest alone as the report times it (first file to last commit), which
   is what the network figures below measure too;
2. STOW-RS: ``imaging-archive serve`` (``servers.Archive``) and ``httpclient.stow``, 50 instances
   per request, 4 clients (as ``run.py``), from first request to last answer;
3. C-STORE: the same server with its DIMSE listener, dcmtk ``storescu`` over 4 parallel
   associations (``dcmtk.store``), from the first process's start to the last one's exit.

After each, the index must hold every instance once (read from the index file). Instances/s and
MB/s of Part 10 bytes (MB = 10^6 bytes); the target: bulk ingest faster than both network paths.
Nothing is asserted; problems are listed and make the exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import datasets
import dcmtk
import httpclient
import report
import servers
from run import file_batches, require_free_port, warm_page_cache

REPO = Path(__file__).resolve().parent.parent
SCU_AE = "BENCHSCU"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="300 CT slices instead of 2,000")
    p.add_argument("--clients", type=int, default=4, help="STOW-RS clients and C-STORE associations (4)")
    p.add_argument("--jobs", type=int, help="imaging-archive ingest --jobs (default: its own)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/imaging-archive-bench"))
    p.add_argument("--port", type=int, default=18580, help="server HTTP port (18580)")
    p.add_argument("--dimse-port", type=int, default=18584, help="server DIMSE port (18584)")
    p.add_argument("--only", help="comma list of bulk, stow, cstore (default: all three)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    return p.parse_args(argv)


def indexed(run_dir: Path) -> tuple[int, int]:
    """(instance rows, distinct SOP Instance UIDs) in an archive's index."""
    with sqlite3.connect(run_dir / "index.db") as db:
        return db.execute("SELECT count(*), count(DISTINCT sop_uid) FROM instances").fetchone()


def config_text(run_dir: Path) -> str:
    files, db = json.dumps(str(run_dir / "files")), json.dumps(f"sqlite+aiosqlite:///{run_dir / 'index.db'}")
    return (f'[storage]\npath = {files}\n[database]\nurl = {db}\n[dimse]\nenabled = false\n'
            '[log]\nlevel = "warning"\n')


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_dir = args.workdir / f"bulk-{time.strftime('%Y%m%d-%H%M%S')}"
        self.problems: list[str] = []
        self.figures: dict[str, dict[str, Any]] = {}

    def check(self, name: str, run_dir: Path, expected: int) -> None:
        rows, distinct = indexed(run_dir)
        if rows != expected or distinct != expected:
            self.problems.append(f"{name}: the index holds {rows} rows ({distinct} distinct) of {expected}")

    def record(self, name: str, instances: int, nbytes: int, seconds: float) -> None:
        fig = {"instances": instances, "bytes": nbytes, "seconds": round(seconds, 3),
               "instances_s": round(instances / seconds, 1), "mb_s": round(nbytes / 1e6 / seconds, 1)}
        self.figures[name] = fig
        print(f"  {name:28} {instances:,} instances in {seconds:.1f} s: {fig['instances_s']:,.0f} "
              f"instances/s, {fig['mb_s']:,.1f} MB/s", flush=True)

    def bulk(self, ct: datasets.CtSet) -> None:
        report.section("1. imaging-archive ingest (local disk, in-process pipeline)")
        run_dir = self.run_dir / "bulk"
        run_dir.mkdir(parents=True)
        config = run_dir / "archive.toml"
        config.write_text(config_text(run_dir))
        out = run_dir / "report.json"
        argv = [sys.executable, "-m", "archive", "ingest", str(ct.files[0].parent), "--config", str(config),
                "--report", str(out)] + (["--jobs", str(self.args.jobs)] if self.args.jobs else [])
        warm_page_cache(ct.files)
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=3600)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            self.problems.append(f"bulk ingest exited with {proc.returncode}: {proc.stderr[-800:]}")
            return
        totals = json.loads(out.read_text())["totals"]
        if totals["stored"] != len(ct.files):
            self.problems.append(f"bulk ingest stored {totals['stored']} of {len(ct.files)}")
        self.record("bulk ingest, whole command", len(ct.files), ct.total_bytes, seconds)
        self.record("bulk ingest, ingest alone", len(ct.files), ct.total_bytes, totals["seconds"])
        self.check("bulk ingest", run_dir, len(ct.files))

    def server(self, name: str, dimse: bool) -> servers.Archive:
        require_free_port(self.args.port)
        if dimse:
            require_free_port(self.args.dimse_port)
        server = servers.Archive(self.run_dir / name, self.args.port,
                                 dimse_port=self.args.dimse_port if dimse else None, store_aets=(SCU_AE,))
        server.start(timeout=60)
        return server

    def stow(self, ct: datasets.CtSet) -> None:
        report.section(f"2. STOW-RS (50 per request, {self.args.clients} clients)")
        server = self.server("stow", dimse=False)
        try:
            warm_page_cache(ct.files)
            r = asyncio.run(httpclient.stow(f"{server.base}/studies", file_batches(ct.files, 50),
                                            self.args.clients))
        finally:
            server.stop()
        for f in r.failures[:3]:
            self.problems.append(f"STOW-RS batch #{f.batch} -> {f.status}: {f.detail[:300]}")
        self.record("STOW-RS", r.instances, r.bytes, r.seconds)
        self.check("STOW-RS", self.run_dir / "stow", len(ct.files))

    def cstore(self, ct: datasets.CtSet) -> None:
        c = self.args.clients
        report.section(f"3. C-STORE (dcmtk storescu, {c} parallel associations)")
        folders = dcmtk.link_folders(ct.files, c, self.run_dir / "cstore-links")
        server = self.server("cstore", dimse=True)
        try:
            dcmtk.wait_for_port(self.args.dimse_port, 15)
            warm_page_cache(ct.files)
            r = dcmtk.store(folders, len(ct.files), ct.total_bytes, self.args.dimse_port, server.ae_title,
                            SCU_AE, self.run_dir / "dcmtk-logs")
        finally:
            server.stop()
        if r.succeeded != len(ct.files) or any(r.exit_codes):
            self.problems.append(f"C-STORE: {r.succeeded}/{len(ct.files)} Success, exit codes {r.exit_codes}")
        self.record("C-STORE", r.succeeded, ct.total_bytes, r.seconds)
        self.check("C-STORE", self.run_dir / "cstore", len(ct.files))

    def summary(self) -> None:
        report.section("summary")
        bulk = self.figures.get("bulk ingest, whole command", {}).get("mb_s")
        alone = self.figures.get("bulk ingest, ingest alone", {}).get("mb_s")
        rows = [(name, f"{f['instances_s']:,.0f}", f"{f['mb_s']:,.1f}",
                 f"{alone / f['mb_s']:.2f}x" if alone and name in ("STOW-RS", "C-STORE") else "")
                for name, f in self.figures.items()]
        print(report.table(rows, ("way in", "instances/s", "MB/s", "bulk (ingest alone) / this")))
        for name in ("STOW-RS", "C-STORE"):
            other = self.figures.get(name, {}).get("mb_s")
            if bulk and alone and other:
                met = "met" if alone > other else "MISSED"
                print(f"  target: bulk ingest faster than {name}: {met} (ingest alone {alone:,.1f} MB/s, "
                      f"whole command {bulk:,.1f} MB/s, {name} {other:,.1f} MB/s)")
        for problem in self.problems:
            print(f"  problem: {problem}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = set((args.only or "bulk,stow,cstore").split(","))
    bench = Bench(args)
    report.section("data")
    shape = (2, 1, 50, 200) if args.quick else (10, 2, 50, 1000)
    ct = datasets.ct_set(args.workdir / "cache", *shape)
    print(f"  CT: {len(ct.files):,} instances, {ct.total_bytes / 1e6:,.0f} MB in {ct.files[0].parent}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    try:
        for name, step in (("bulk", bench.bulk), ("stow", bench.stow), ("cstore", bench.cstore)):
            if name in only:
                step(ct)
    finally:
        shutil.rmtree(bench.run_dir, ignore_errors=True)
    bench.summary()
    print(f"  load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"figures": bench.figures, "problems": bench.problems,
                                         "instances": len(ct.files), "bytes": ct.total_bytes}, indent=1))
    return 1 if bench.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
