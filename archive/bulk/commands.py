"""The operator commands of ``imaging-archive``: ``ingest``, ``verify``, ``stats``, ``export`` and
``delete`` (docs/operations.md). Each opens the configured index and storage in its own process,
so it runs with or without a server on them.

Exit codes: 0 success; 1 the work was done but something failed or a problem remains (files that
could not be ingested, problems verify found); 2 a usage problem (configuration, arguments);
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from archive import config, logs
from archive.bulk.importer import BulkIngest
from archive.bulk.progress import Progress
from archive.bulk.remove import delete_study, study_summary
from archive.bulk.report import Summary
from archive.bulk.resources import open_archive
from archive.bulk.sources import SourceError, scan
from archive.bulk.state import ResumeState
from archive.cohorts.cli import _base_url as base_url  # the cohort commands' default
from archive.dicom.uids import is_valid_uid
from archive.export import Exported, ExportError, export_cohort
from archive.index.db import SchemaError, using_engine
from archive.stats import archive_stats
from archive.verify import Repairer, Verifier, VerifyReport
from storage.base import StorageError

INTERRUPTED = 130


class UsageError(Exception):
    """A problem with the command's arguments (exit 2)."""


def _run(args: argparse.Namespace, work: Callable[[config.Config], int]) -> int:
    """Load the configuration, set up logging, run ``work``; usage problems exit 2."""
    try:
        cfg = config.load(args.config)
        logs.setup(cfg.log.level, cfg.log.format)
        return work(cfg)
    except (config.ConfigError, SchemaError, SourceError, UsageError, ExportError) as exc:
        print(f"imaging-archive: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:  # the store itself failed (an object store unreachable...)
        print(f"imaging-archive: storage error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the command's own handling began (or after it ended)
        print("imaging-archive: interrupted", file=sys.stderr)
        return INTERRUPTED


# -- ingest -------------------------------------------------------------------------------------

def default_state_path(cfg: config.Config, paths: list[Path], report: Path | None) -> Path:
    """Beside the report, or in ``ingest-state/`` beside the storage folder, named after the paths
    (the same command finds its state again)."""
    if report is not None:
        return report.with_name(report.name + ".state")
    names = "\n".join(sorted(os.path.abspath(p) for p in paths))
    digest = hashlib.sha256(names.encode()).hexdigest()[:16]
    return cfg.storage_path.parent / "ingest-state" / f"{digest}.jsonl"


async def _ingest(cfg: config.Config, args: argparse.Namespace) -> int:
    items = await asyncio.to_thread(scan, args.paths)
    state_path = args.state or default_state_path(cfg, args.paths, args.report)
    state = await ResumeState.open(state_path, args.restart)
    summary = Summary([os.path.abspath(p) for p in args.paths], str(state_path))
    progress = Progress(len(items), sum(i.size for i in items), interval=args.progress_interval)
    async with open_archive(cfg, args.parse_processes) as archive:
        # What exists now lives to the end (the scanned items, the state, modules): out of the
        # garbage collector's full passes, which otherwise walk it again and again.
        gc.freeze()
        bulk = BulkIngest(archive, state, summary, progress, args.jobs)
        bulk.stop_on_signals()
        try:
            await bulk.run(items)
        except asyncio.CancelledError:  # a second Ctrl-C: stopped at once
            summary.interrupted = True
    if args.report is not None:
        await asyncio.to_thread(summary.write, args.report)
    summary.print(sys.stdout)
    return INTERRUPTED if summary.interrupted else 1 if summary.failed else 0


def ingest_command(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        print("imaging-archive: --jobs must be at least 1", file=sys.stderr)
        return 2

    def work(cfg: config.Config) -> int:
        if not args.verbose:  # one line per instance would drown the progress line
            logging.getLogger("archive.ingest").setLevel(logging.WARNING)
        return asyncio.run(_ingest(cfg, args))

    return _run(args, work)


# -- verify -------------------------------------------------------------------------------------

def _print_verify(report: VerifyReport, repair: bool) -> None:
    counts = report.to_json()["counts"]
    print(f"checked {report.rows:,} index rows and {report.files:,} stored files "
          f"({'sizes and data set hashes' if report.hashed else 'sizes only'}): {counts['missing']:,} "
          f"missing, {counts['corrupt']:,} corrupt, {counts['orphan']:,} orphan(s)")
    if not report.complete_listing:
        print("note: this storage backend was listed folder by folder for the series the index knows; "
              "orphans in other folders are not seen")
    for p in report.problems:
        outcome = f" -> {p.repaired}" if p.repaired else (" (remains)" if repair else "")
        print(f"  {p.kind:8} {p.key}: {p.detail}{outcome}")


def verify_command(args: argparse.Namespace) -> int:
    def work(cfg: config.Config) -> int:
        async def run() -> VerifyReport:
            async with open_archive(cfg) as archive:
                report = await Verifier(archive, quick=args.quick, jobs=args.jobs).run()
                if args.repair:
                    await Repairer(archive).repair(report)
                return report

        report = asyncio.run(run())
        if args.json:
            print(json.dumps(report.to_json(), indent=1))
        else:
            _print_verify(report, args.repair)
        return 1 if report.remaining else 0

    return _run(args, work)


# -- stats, export, delete ----------------------------------------------------------------------

def stats_command(args: argparse.Namespace) -> int:
    def work(cfg: config.Config) -> int:
        stats = asyncio.run(using_engine(cfg.database_url, archive_stats, cfg.database.echo))
        if args.json:
            print(json.dumps(stats.to_json(), indent=1))
        else:
            stats.print(sys.stdout)
        return 0

    return _run(args, work)


def export_command(args: argparse.Namespace) -> int:
    def work(cfg: config.Config) -> int:
        async def run() -> Exported:
            async with open_archive(cfg) as archive:
                return await export_cohort(archive, args.cohort_id, args.dir, base_url(cfg, args.base_url))

        done = asyncio.run(run())
        print(f"exported {done.instances:,} instances ({done.bytes / 1e6:,.1f} MB; {done.skipped:,} were "
              f"there already) to {args.dir}, manifest {args.dir / 'manifest.json'}")
        if done.failed:
            print(f"{len(done.failed):,} instance(s) could not be copied (run imaging-archive verify): "
                  f"{', '.join(done.failed[:10])}", file=sys.stderr)
        return 1 if done.failed else 0

    return _run(args, work)


def _confirm(study_uid: str, summary: dict[str, object]) -> bool:
    print(f"study {study_uid}: patient {summary['patient_id']} ({summary['release_state']}), "
          f"date {summary['study_date'] or '-'}, {summary['study_description'] or '(no description)'}: "
          f"{summary['num_series']} series, {summary['num_instances']} instances, "
          f"{int(summary['size'] or 0) / 1e6:,.1f} MB", file=sys.stderr)
    if not sys.stdin.isatty():
        return False
    return input("delete it? [y/N] ").strip().lower() in ("y", "yes")


def delete_command(args: argparse.Namespace) -> int:
    bad = [uid for uid in args.study if not is_valid_uid(uid)]
    if bad:
        print(f"imaging-archive: not a valid UID: {bad[0]!r}", file=sys.stderr)
        return 2

    def work(cfg: config.Config) -> int:
        async def summaries() -> dict[str, dict[str, object] | None]:
            async def read(engine: AsyncEngine) -> dict[str, dict[str, object] | None]:
                async with engine.connect() as conn:
                    return {uid: await conn.run_sync(study_summary, uid) for uid in args.study}
            return await using_engine(cfg.database_url, read)

        found = asyncio.run(summaries())
        missing = [uid for uid, s in found.items() if s is None]
        if missing:
            raise UsageError(f"no study {missing[0]} in the index")
        if not args.yes and not all(_confirm(uid, s) for uid, s in found.items() if s is not None):
            print("imaging-archive: nothing deleted (give --yes to delete without asking)", file=sys.stderr)
            return 2

        async def run() -> None:
            async with open_archive(cfg) as archive:
                for uid in args.study:
                    removed = await delete_study(archive, uid)
                    if removed is not None:
                        print(f"deleted study {uid}: {len(removed.keys)} instance(s)")

        asyncio.run(run())
        return 0

    return _run(args, work)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``ingest``, ``verify``, ``stats``, ``export`` and ``delete`` to ``imaging-archive``."""
    ing = sub.add_parser(
        "ingest", help="bulk import of folders, zip files and DICOMDIRs through the ingest pipeline",
        description="Store every DICOM file of the given folders (recursive), zip files and DICOMDIRs as "
                    "STOW-RS would; resumable: run the same command again after an interruption.")
    ing.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="folder, zip file, DICOMDIR or file")
    ing.add_argument("--config", help="TOML configuration file (default: built-in defaults)")
    ing.add_argument("--report", type=Path, metavar="FILE", help="write a JSON report: every file's outcome "
                                                                 "and the totals")
    ing.add_argument("--state", type=Path, metavar="FILE",
                     help="resume state (default: REPORT.state, else archive-data/ingest-state/…)")
    ing.add_argument("--restart", action="store_true", help="forget what earlier runs did")
    ing.add_argument("--jobs", type=int, default=8, help="files read and parsed at once (8)")
    ing.add_argument("--parse-processes", type=int, metavar="N",
                     help="parse worker processes for this run (default: [ingest] parse_processes)")
    ing.add_argument("--progress-interval", type=float, default=10.0, metavar="S",
                     help="seconds between progress log lines when stderr is not a terminal (10)")
    ing.add_argument("--verbose", action="store_true", help="log every stored instance")
    ing.set_defaults(func=ingest_command)
    ver = sub.add_parser("verify", help="check that storage holds what the index says, and nothing else",
                         description="Every index row has its file (size, data set hash) and every stored "
                                     "file its row; --repair indexes orphan files and removes the rows of "
                                     "missing or corrupt ones (docs/operations.md).")
    ver.add_argument("--config", help="TOML configuration file (default: built-in defaults)")
    ver.add_argument("--repair", action="store_true",
                     help="index orphans; remove missing and corrupt instances")
    ver.add_argument("--quick", action="store_true", help="check sizes only, not the data set hashes")
    ver.add_argument("--jobs", type=int, default=4, help="files checked at once (4)")
    ver.add_argument("--json", action="store_true", help="print the report as JSON")
    ver.set_defaults(func=verify_command)
    st = sub.add_parser("stats", help="patients, studies, series, instances and bytes, by release state "
                                      "and modality")
    st.add_argument("--config", help="TOML configuration file (default: built-in defaults)")
    st.add_argument("--json", action="store_true", help="print them as JSON")
    st.set_defaults(func=stats_command)
    ex = sub.add_parser("export", help="write a saved cohort's instances as DICOM files, and its manifest")
    ex.add_argument("cohort_id", metavar="COHORT_ID", help="a saved cohort (imaging-archive cohort list)")
    ex.add_argument("dir", type=Path, metavar="DIR", help="output folder: DIR/{study}/{series}/{sop}.dcm")
    ex.add_argument("--config", help="TOML configuration file (default: built-in defaults)")
    ex.add_argument("--base-url", help="DICOMweb root for the manifest's URLs (default: [http] base_url, "
                                       "else http://HOST:PORT/dicom-web)")
    ex.set_defaults(func=export_command)
    de = sub.add_parser("delete", help="delete studies: index rows in one transaction, then files (admin)")
    de.add_argument("--study", action="append", required=True, metavar="UID",
                    help="StudyInstanceUID (repeat for several)")
    de.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    de.add_argument("--config", help="TOML configuration file (default: built-in defaults)")
    de.set_defaults(func=delete_command)
