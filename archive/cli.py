"""The ``imaging-archive`` command."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import signal
import socket
import sys

import sqlalchemy.exc
from aiohttp import web

from archive import __version__, config, logs, metrics
from archive.app import create_app, stop_accepting
from archive.auth import new_token, token_hash
from archive.bulk import commands as ops_commands
from archive.clinical import cli as clinical_commands
from archive.cohorts import cli as cohort_commands
from archive.harmonize import commands as harmonize_commands
from archive.index import migrate
from archive.index.db import SchemaError, create_engine, using_engine
from archive.limits import GATE
from archive.readtimeout import AppRunner
from archive.release import commands as release_commands
from archive.runtime import use_private_tempdir
from archive.supervisor import supervise
from storage.base import StorageError

log = logging.getLogger("archive")

# Seconds the cancelled requests get to unwind at the end of a shutdown.
_CANCEL_WAIT = 2.0


def _serve(args: argparse.Namespace) -> int:
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"imaging-archive: {exc}", file=sys.stderr)
        return 2
    host = args.host or cfg.http.host
    port = args.port or cfg.http.port
    problem = unauthenticated_exposure(cfg, host)
    if problem:
        print(f"imaging-archive: {problem}", file=sys.stderr)
        return 2
    logs.setup(cfg.log.level, cfg.log.format)
    workers = args.workers or cfg.http.workers
    if workers > 1 and args.worker_index is None:
        # The schema is made once, here: workers starting together on a new database would
        # race to create the same tables.
        try:
            asyncio.run(using_engine(cfg.database_url, _nothing))
        except SchemaError as exc:
            print(f"imaging-archive: {exc}", file=sys.stderr)
            return 2
        except (OSError, sqlalchemy.exc.DBAPIError) as exc:
            print(f"imaging-archive: cannot open the index: {exc}", file=sys.stderr)
            return 1
        # /metrics adds up every worker's figures from files in one folder (archive.metrics).
        metrics.use_multiprocess_dir(cfg.storage_path)
        return supervise(args, workers, host, port)
    if args.worker_index:
        cfg.dimse.enabled = False  # one DIMSE listener: worker 0's
    use_private_tempdir(cfg.storage_path)
    log.info("imaging-archive %s serving DICOMweb on http://%s:%d/dicom-web%s", __version__, host, port,
             f" (worker {args.worker_index})" if args.worker_index is not None else "")
    try:
        asyncio.run(_run(create_app(cfg), host, port, cfg.http.shutdown_timeout, cfg.http.read_timeout,
                         listen_fd=args.listen_fd))
    except SchemaError as exc:
        print(f"imaging-archive: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:  # at start-up: e.g. a bucket that is missing or unreachable
        print(f"imaging-archive: storage: {exc}", file=sys.stderr)
        return 2
    except (OSError, sqlalchemy.exc.DBAPIError) as exc:  # at start-up: the index is unreachable
        print(f"imaging-archive: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


async def _nothing(_engine: object) -> None:
    return None


async def _run(app: web.Application, host: str, port: int, shutdown_timeout: float,
               read_timeout: float = 0.0, listen_fd: int | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully: stop listening (HTTP and DIMSE),
    let in-flight requests finish for up to ``shutdown_timeout`` seconds, cancel the rest.

    Not ``web.run_app``: its shutdown closes every connection for reading first (aiohttp drops
    the data that arrives after), so an upload in flight could never complete."""
    runner = AppRunner(app, access_log=None, handle_signals=False,
                       shutdown_timeout=_CANCEL_WAIT, read_timeout=read_timeout)
    await runner.setup()
    try:
        site: web.BaseSite
        if listen_fd is not None:  # a worker of `serve --workers N`: the supervisor's socket
            sock = socket.socket(fileno=listen_fd)
            site = web.SockSite(runner, sock)
        else:
            site = web.TCPSite(runner, host, port)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        gate = app[GATE]
        log.info("shutting down: %d request(s) in progress, waiting up to %g s",
                 gate.active, shutdown_timeout)
        await site.stop()
        await stop_accepting(app)
        if not await gate.drain(shutdown_timeout):
            log.warning("shutdown: cancelling %d request(s) still running after %g s",
                        gate.active, shutdown_timeout)
    finally:
        await runner.cleanup()
    log.info("stopped")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def unauthenticated_exposure(cfg: config.Config, http_host: str) -> str | None:
    """Why the server must not start: single-user (no tokens) on a non-loopback address."""
    if cfg.auth.tokens or cfg.auth.jwt or cfg.http.allow_unauthenticated:
        return None
    hosts = [("HTTP", http_host)] + ([("DIMSE", cfg.dimse.host)] if cfg.dimse.enabled else [])
    for what, host in hosts:
        if not _is_loopback(host):
            return (f"no [[auth.tokens]] are configured (single-user mode: every caller is admin), "
                    f"so the {what} listener may only use a loopback address, not {host!r}; add "
                    "tokens (imaging-archive token new) or set [http] allow_unauthenticated = true")
    return None


def _db_upgrade(args: argparse.Namespace) -> int:
    """Bring the index to the schema revision of this release (back it up first)."""
    cfg = config.load(args.config)

    async def run() -> tuple[str | None, str]:
        engine = create_engine(cfg.database_url)
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(migrate.upgrade)
        finally:
            await engine.dispose()

    try:
        before, after = asyncio.run(run())
    except ValueError as exc:
        print(f"imaging-archive db upgrade: {exc}", file=sys.stderr)
        return 1
    if before == after:
        print(f"the index is at revision {after} already")
    else:
        print(f"the index was upgraded from revision {before or '(new)'} to {after}"
              + ("; run `imaging-archive harmonize apply` to place the stored studies" if before == "0001"
                 else ""))
    return 0


def _token_new(args: argparse.Namespace) -> int:
    token = new_token()
    print(f"token (shown once, give it to {args.name}): {token}", file=sys.stderr)
    # json.dumps gives a valid TOML basic string whatever the name holds (quotes, backslashes).
    print(f'[[auth.tokens]]\nname = {json.dumps(args.name)}\nrole = "{args.role}"\n'
          f'sha256 = "{token_hash(token)}"')
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line: every subcommand and its options."""
    parser = argparse.ArgumentParser(prog="imaging-archive", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the archive server")
    serve.add_argument("--config", help="TOML configuration file (default: built-in defaults)")
    serve.add_argument("--host", help="override [http] host")
    serve.add_argument("--port", type=int, help="override [http] port")
    serve.add_argument("--workers", type=int, help="HTTP worker processes on the port (override "
                                                   "[http] workers); DIMSE runs in the first")
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # the supervisor's socket
    serve.set_defaults(func=_serve)
    token = sub.add_parser("token", help="bearer tokens")
    tsub = token.add_subparsers(dest="token_command", required=True)
    tnew = tsub.add_parser("new", help="make a token: prints it once, and the TOML lines to add")
    tnew.add_argument("--role", required=True, choices=config.ROLES)
    tnew.add_argument("--name", required=True, help="who holds it (shown in logs)")
    tnew.set_defaults(func=_token_new)
    db = sub.add_parser("db", help="the index database")
    dsub = db.add_subparsers(dest="db_command", required=True)
    up = dsub.add_parser("upgrade", help="bring the index to this release's schema revision (back it up "
                                         "first)")
    up.add_argument("--config", help="TOML configuration file")
    up.set_defaults(func=_db_upgrade)
    harmonize_commands.add_commands(sub)
    clinical_commands.add_commands(sub)
    cohort_commands.add_commands(sub)
    release_commands.add_commands(sub)
    ops_commands.add_commands(sub)  # ingest, verify, stats, export, delete
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except config.ConfigError as exc:
        print(f"imaging-archive: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
