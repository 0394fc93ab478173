"""``imaging-archive clinical import FILE…`` and ``imaging-archive clinical report``: each opens the
configured database itself, so it runs beside a serving archive (SQLite in WAL mode) or without.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from archive import config
from archive.clinical.importer import ImportReport, import_clinical
from archive.clinical.report import linkage_report, summary
from archive.index.db import SchemaError, using_engine

T = TypeVar("T")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``clinical import`` and ``clinical report`` to the ``imaging-archive`` command."""
    clinical = sub.add_parser("clinical", help="clinical data (MIDRC data dictionary): import, report")
    commands = clinical.add_subparsers(dest="clinical_command", required=True)
    imp = commands.add_parser(
        "import", help="import MIDRC case / measurement / imaging_study files (TSV, CSV, JSON)",
        description="Validate the files and import them in one transaction: on any error nothing changes.")
    imp.add_argument("files", nargs="+", metavar="FILE", help="case.tsv, measurement.tsv, ... or JSON")
    imp.add_argument("--config", help="TOML configuration file (default: built-in defaults)")
    imp.add_argument("--json", action="store_true", help="print the import report as JSON")
    imp.set_defaults(func=import_command)
    rep = commands.add_parser("report", help="patients without clinical data, clinical data without images")
    rep.add_argument("--config", help="TOML configuration file (default: built-in defaults)")
    rep.add_argument("--json", action="store_true", help="print the report as JSON")
    rep.add_argument("--limit", type=int, default=1000, help="entries listed per section (default 1000)")
    rep.set_defaults(func=report_command)


async def _with_engine(cfg: config.Config, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    return await using_engine(cfg.database_url, work, cfg.database.echo)


def _load_config(path: str | None) -> config.Config | None:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        print(f"imaging-archive: {exc}", file=sys.stderr)
        return None


def print_import_report(report: ImportReport) -> None:
    """Counts, notes and errors, one per line (errors on stderr)."""
    for note in report.notes:
        print(f"note: {note}")
    if report.ok:
        for node, counts in report.counts.items():
            print(f"{node}: {counts.inserted} inserted, {counts.updated} updated")
        return
    for e in report.errors:
        where = f"{e.file}:{e.line}" if e.line else e.file
        print(f"{where}: {e.field + ': ' if e.field else ''}{e.reason}", file=sys.stderr)
    if report.error_count > len(report.errors):
        print(f"... and {report.error_count - len(report.errors)} more errors", file=sys.stderr)
    print(f"{report.error_count} error(s): nothing was imported", file=sys.stderr)


def import_command(args: argparse.Namespace) -> int:
    """Exit 0 when imported, 1 on errors in the files (nothing changed), 2 on a usage problem."""
    cfg = _load_config(args.config)
    if cfg is None:
        return 2
    files: list[tuple[str, bytes]] = []
    for name in args.files:
        try:
            files.append((name, Path(name).read_bytes()))
        except OSError as exc:
            print(f"imaging-archive: cannot read {name}: {exc.strerror}", file=sys.stderr)
            return 2
    try:
        report = asyncio.run(_with_engine(cfg, lambda engine: import_clinical(engine, files)))
    except SchemaError as exc:
        print(f"imaging-archive: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_import_report(report)
    return 0 if report.ok else 1


def report_command(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    if cfg is None:
        return 2
    if args.limit < 1:
        print("imaging-archive: --limit must be at least 1", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_with_engine(cfg, lambda engine: linkage_report(engine, args.limit)))
    except SchemaError as exc:
        print(f"imaging-archive: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_json(), indent=2) if args.json else summary(result))
    return 0
