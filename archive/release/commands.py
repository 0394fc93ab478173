"""``imaging-archive release set --patient ID --state open|sequestered|quarantined``."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

from archive import config
from archive.auth import STATES


def add_commands(sub: Any) -> None:
    rel = sub.add_parser("release", help="release states of patients (admin)")
    rsub = rel.add_subparsers(dest="release_command", required=True)
    s = rsub.add_parser("set", help="set a patient's release state (logged)")
    s.add_argument("--patient", required=True, help="PatientID")
    s.add_argument("--state", required=True, choices=STATES)
    s.add_argument("--reason", default="")
    s.add_argument("--config", help="TOML configuration file")
    s.set_defaults(func=_set)
    q = sub.add_parser("sequester", help="assign pending patients to open or sequestered by stratified "
                                         "random sampling, per site (admin; logged)")
    q.add_argument("--fraction", type=float, help="share sequestered (default: [release] fraction)")
    q.add_argument("--seed", type=int, help="seed of the draws (default: [release] seed)")
    q.add_argument("--dry-run", action="store_true", help="print the outcome, change nothing")
    q.add_argument("--config", help="TOML configuration file")
    q.set_defaults(func=_sequester)


def _set(args: argparse.Namespace) -> int:
    from archive.index.db import run_in_transaction
    from archive.release.states import ReleaseError, set_state

    cfg = config.load(args.config)
    try:
        changes = asyncio.run(run_in_transaction(cfg.database_url, set_state, args.patient, args.state,
                                                 f"cli:{getpass.getuser()}", "manual", args.reason))
    except ReleaseError as exc:
        print(f"imaging-archive release: {exc}", file=sys.stderr)
        return 1
    if not changes:
        print(f"patient {args.patient} is {args.state} already")
    for c in changes:
        print(f"patient {c.patient_id}: {c.previous} -> {c.state}")
    return 0


def _sequester(args: argparse.Namespace) -> int:
    import dataclasses

    from archive.index.db import run_in_transaction
    from archive.release.assign import run_sequester
    from archive.release.sequester import balance_report, format_report

    cfg = config.load(args.config)
    rel = dataclasses.replace(cfg.release, fraction=args.fraction if args.fraction is not None
                              else cfg.release.fraction)
    seed = args.seed if args.seed is not None else rel.seed
    if not 0 < rel.fraction < 1:
        print("imaging-archive sequester: --fraction must be between 0 and 1", file=sys.stderr)
        return 2

    assignment, people = asyncio.run(run_in_transaction(cfg.database_url, run_sequester, rel, seed,
                                                        f"cli:{getpass.getuser()}", args.dry_run))
    print(format_report(balance_report(people, assignment.states()), assignment))
    print(f"{len(assignment.decisions)} patient(s) assigned"
          f"{' (dry run: nothing written)' if args.dry_run else ''}; rule: {assignment.rule}")
    return 0
