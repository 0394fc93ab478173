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


def _set(args: argparse.Namespace) -> int:
    from archive.index.db import create_engine, init_schema
    from archive.release.states import ReleaseError, set_state

    cfg = config.load(args.config)

    async def run() -> Any:
        engine = create_engine(cfg.database_url)
        try:
            await init_schema(engine)
            async with engine.begin() as conn:
                return await conn.run_sync(set_state, args.patient, args.state,
                                           f"cli:{getpass.getuser()}", "manual", args.reason)
        finally:
            await engine.dispose()

    try:
        changes = asyncio.run(run())
    except ReleaseError as exc:
        print(f"imaging-archive release: {exc}", file=sys.stderr)
        return 1
    if not changes:
        print(f"patient {args.patient} is {args.state} already")
    for c in changes:
        print(f"patient {c.patient_id}: {c.previous} -> {c.state}")
    return 0
