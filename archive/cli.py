"""The ``imaging-archive`` command."""

from __future__ import annotations

import argparse
import logging
import sys

from aiohttp import web

from archive import __version__, config, logs
from archive.app import create_app

log = logging.getLogger("archive")


def _serve(args: argparse.Namespace) -> int:
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"imaging-archive: {exc}", file=sys.stderr)
        return 2
    host = args.host or cfg.http.host
    port = args.port or cfg.http.port
    logs.setup(cfg.log.level, cfg.log.format)
    log.info("imaging-archive %s serving DICOMweb on http://%s:%d/dicom-web", __version__, host, port)
    web.run_app(create_app(cfg), host=host, port=port, print=None, access_log=None,
                shutdown_timeout=30)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imaging-archive", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the archive server")
    serve.add_argument("--config", help="TOML configuration file (default: built-in defaults)")
    serve.add_argument("--host", help="override [http] host")
    serve.add_argument("--port", type=int, help="override [http] port")
    serve.set_defaults(func=_serve)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
