"""``imaging-archive harmonize apply | unmapped | preview FILE`` (docs/harmonization.md)."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from archive import config
from archive.harmonize import Harmonizer
from archive.harmonize.preview import preview


def add_commands(sub: Any) -> None:
    h = sub.add_parser("harmonize", help="harmonized study descriptions (LOINC)")
    hsub = h.add_subparsers(dest="harmonize_command", required=True)
    apply = hsub.add_parser("apply", help="re-place every stored study (after a mapping change)")
    apply.add_argument("--config", help="TOML configuration file")
    apply.set_defaults(func=_apply)
    report = hsub.add_parser("unmapped", help="unmapped descriptions, most frequent first (TSV)")
    report.add_argument("--config", help="TOML configuration file")
    report.add_argument("--json", action="store_true", help="JSON instead of TSV")
    report.add_argument("--limit", type=int, help="at most this many rows")
    report.set_defaults(func=_unmapped)
    pre = hsub.add_parser("preview", help="place the rows of a TSV (Modality, StudyDescription); "
                                          "needs no server")
    pre.add_argument("file", type=Path, help="TSV file, or - for standard input")
    pre.add_argument("--config", help="TOML configuration file (for the override file)")
    pre.set_defaults(func=_preview)


def _load(args: argparse.Namespace) -> config.Config:
    return config.load(args.config)


def _harmonizer(cfg: config.Config) -> Harmonizer:
    return Harmonizer.load(cfg.harmonize_override_path, cfg.harmonize.threshold)


async def _with_index(cfg: config.Config, fn: Any, *args: Any) -> Any:
    from archive.index.db import run_in_transaction

    return await run_in_transaction(cfg.database_url, fn, *args)


def _apply(args: argparse.Namespace) -> int:
    from archive.index.procedures import place_all

    cfg = _load(args)
    counts: Counter[str] = asyncio.run(_with_index(cfg, place_all, _harmonizer(cfg)))
    studies = counts["changed"] + counts["unchanged"]
    placed = studies - counts["unmapped"]
    print(f"harmonize apply: {studies} studies; {counts['changed']} changed; "
          f"{placed} placed ({counts['exact']} exact, {counts['override']} override, "
          f"{counts['matched']} matched), {counts['unmapped']} unmapped")
    return 0


def _unmapped(args: argparse.Namespace) -> int:
    from archive.auth import ALL
    from archive.index.procedures import UNMAPPED_COLUMNS, unmapped

    cfg = _load(args)
    # The operator's own command: every release state counts.
    rows: list[dict[str, Any]] = asyncio.run(_with_index(cfg, unmapped, ALL, args.limit))
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    writer = csv.DictWriter(sys.stdout, UNMAPPED_COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return 0


def _preview(args: argparse.Namespace) -> int:
    cfg = _load(args)
    try:
        if str(args.file) == "-":
            preview(sys.stdin, sys.stdout, _harmonizer(cfg))
        else:
            with args.file.open(encoding="utf-8-sig", newline="") as fin:
                preview(fin, sys.stdout, _harmonizer(cfg))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"imaging-archive harmonize preview: {exc}", file=sys.stderr)
        return 2
    return 0
