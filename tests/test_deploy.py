"""deploy/ (scale-out issue): the example configuration loads, and the commands the systemd units
run are commands of this release, with the configuration the example installs."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from archive import config
from archive.cli import build_parser

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
INSTALLED_CONFIG = "/etc/imaging-archive/archive.toml"


def test_the_example_configuration_is_a_scale_out_one() -> None:
    cfg = config.load(DEPLOY / "archive.toml")
    assert cfg.database_url.startswith("postgresql+asyncpg://")
    assert cfg.storage.backend == "s3" and cfg.storage.s3.bucket
    assert cfg.http.workers > 1 and cfg.http.host == "0.0.0.0"
    assert cfg.auth.tokens  # a server on a network address needs them (no single-user mode)
    assert cfg.log.format == "json"
    if cfg.dimse.enabled:  # a PACS must be able to store: some calling AE has a role that may
        assert any(ae.role in ("contributor", "admin") for ae in cfg.dimse.ae)


def _exec_start(unit: str) -> list[str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(DEPLOY / "systemd" / unit)
    return shlex.split(parser["Service"]["ExecStart"])


def test_the_units_run_commands_of_this_release() -> None:
    ordered = []
    for unit in ("imaging-archive-migrate.service", "imaging-archive.service"):
        argv = _exec_start(unit)
        assert argv[0].endswith("/bin/imaging-archive")
        args = build_parser().parse_args(argv[1:])  # exits (fails the test) on an unknown option
        assert args.config == INSTALLED_CONFIG
        ordered.append(args.command)
    assert ordered == ["db", "serve"]
    server = configparser.ConfigParser(strict=False, interpolation=None)
    server.read(DEPLOY / "systemd" / "imaging-archive.service")
    assert "imaging-archive-migrate.service" in server["Unit"]["Requires"]  # schema first


def test_the_readme_points_at_the_deploy_folder() -> None:
    readme = (DEPLOY.parent / "README.md").read_text(encoding="utf-8")
    assert "deploy/" in readme
    for name in ("archive.toml", "nginx.conf", "systemd/imaging-archive.service"):
        assert (DEPLOY / name).exists() and name in (DEPLOY / "README.md").read_text(encoding="utf-8")
