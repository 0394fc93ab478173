"""Configuration: defaults, TOML files, path resolution, errors that name the key, the CLI exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from archive import config
from archive.config import Config, ConfigError


def write(folder: Path, text: str, name: str = "archive.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = config.load(None)
    assert cfg.http.host == "127.0.0.1" and cfg.http.port == 8080
    assert cfg.http.cors_origins == [] and cfg.http.base_url == ""
    assert cfg.dimse.port == 11112 and cfg.dimse.ae_title == "IMAGING-ARCHIVE"
    assert cfg.storage.backend == "filesystem"
    assert cfg.ingest.duplicate_policy == "reject"
    assert cfg.ingest.bulk_data_threshold == 1024
    assert cfg.qido.max_results == 1000
    assert cfg.log.level == "info"
    # Relative defaults resolve against the working directory.
    assert cfg.storage_path == tmp_path / "archive-data" / "files"
    assert cfg.database_url == f"sqlite+aiosqlite:///{tmp_path}/archive-data/index.db"
    # An empty file is the defaults too.
    assert config.load(write(tmp_path, "")).http == cfg.http


def test_from_a_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path / "etc", """
[http]
host = "0.0.0.0"
port = 8042
cors_origins = ["http://viewer.example", "https://ohif.example"]
base_url = "https://archive.example/dicom-web"

[dimse]
enabled = false
ae_title = "ARCHIVE"

[storage]
path = "/srv/archive/files"

[database]
url = "sqlite+aiosqlite:////srv/archive/index.db"
echo = true

[ingest]
duplicate_policy = "overwrite"
bulk_data_threshold = 0

[qido]
max_results = 50

[log]
level = "debug"
format = "json"
""")
    cfg = config.load(path)
    assert cfg.base_dir == path.parent
    assert (cfg.http.host, cfg.http.port) == ("0.0.0.0", 8042)
    assert cfg.http.cors_origins == ["http://viewer.example", "https://ohif.example"]
    assert cfg.http.base_url == "https://archive.example/dicom-web"
    assert cfg.dimse.enabled is False and cfg.dimse.ae_title == "ARCHIVE"
    assert cfg.dimse.port == 11112  # keys left out keep their defaults
    assert cfg.storage_path == Path("/srv/archive/files")
    assert cfg.database_url == "sqlite+aiosqlite:////srv/archive/index.db"
    assert cfg.database.echo is True
    assert cfg.ingest.duplicate_policy == "overwrite" and cfg.ingest.bulk_data_threshold == 0
    assert cfg.qido.max_results == 50
    assert (cfg.log.level, cfg.log.format) == ("debug", "json")


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "site"
    path = write(folder, '[storage]\npath = "data/files"\n'
                         '[database]\nurl = "sqlite+aiosqlite:///db/index.db"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = config.load(Path("..") / "site" / "archive.toml")  # a relative config path too
    assert cfg.base_dir == folder
    assert cfg.storage_path == folder / "data" / "files"
    assert cfg.database_url == f"sqlite+aiosqlite:///{folder}/db/index.db"
    # The plain sqlite:/// prefix too; absolute paths, memory databases and other URLs stay.
    for url, expected in [
        ("sqlite:///x.db", f"sqlite:///{folder}/x.db"),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
        ("postgresql+asyncpg://u@db/archive", "postgresql+asyncpg://u@db/archive"),
    ]:
        path.write_text(f'[database]\nurl = "{url}"\n', encoding="utf-8")
        assert config.load(path).database_url == expected
    path.write_text('[storage]\npath = "~/files"\n', encoding="utf-8")
    assert config.load(path).storage_path == Path.home() / "files"


@pytest.mark.parametrize(("text", "named"), [
    ("[htttp]\nport = 1\n", "htttp"),
    ("port = 8080\n", "port"),
    ("[http]\nprot = 8080\n", "prot"),
    ("[ingest]\nduplicate = \"reject\"\n", "duplicate"),
    ("[http]\nport = \"8080\"\n", "port"),
    ("[http]\nport = 80.5\n", "port"),
    ("[http]\nport = true\n", "port"),
    ("[http]\nport = 0\n", "port"),
    ("[http]\nport = 70000\n", "port"),
    ("[dimse]\nport = -1\n", "port"),
    ("[http]\nhost = 127\n", "host"),
    ("[http]\ncors_origins = \"*\"\n", "cors_origins"),
    ("[http]\ncors_origins = [1, 2]\n", "cors_origins"),
    ("[dimse]\nenabled = \"yes\"\n", "enabled"),
    ("[dimse]\nenabled = 1\n", "enabled"),
    ("[database]\necho = \"false\"\n", "echo"),
    ("[storage]\npath = 5\n", "path"),
    ("[storage]\nbackend = \"s3\"\n", "backend"),
    ("[ingest]\nduplicate_policy = \"replace\"\n", "duplicate_policy"),
    ("[ingest]\nduplicate_policy = 1\n", "duplicate_policy"),
    ("[ingest]\nbulk_data_threshold = -1\n", "bulk_data_threshold"),
    ("[qido]\nmax_results = 0\n", "max_results"),
    ("[log]\nlevel = \"verbose\"\n", "level"),
    ("[log]\nformat = \"xml\"\n", "format"),
    ("[release]\nmin_cell_count = 0\n", "min_cell_count"),
    ("[release]\nstrata = [\"race\", \"race\"]\n", "strata"),
    ("[release]\nstrata = [\"height\"]\n", "strata"),
    ("http = 5\n", "http"),
])
def test_bad_settings_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text))
    assert named in str(info.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[http\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "missing.toml")
    assert "missing.toml" in str(info.value)


def test_from_dict_is_the_same_validation() -> None:
    with pytest.raises(ConfigError, match="duplicate_policy"):
        config.from_dict({"ingest": {"duplicate_policy": "keep-both"}})
    cfg = config.from_dict({"qido": {"max_results": 5}}, base_dir=Path("/base"))
    assert isinstance(cfg, Config) and cfg.qido.max_results == 5
    assert cfg.storage_path == Path("/base/archive-data/files")


def _serve(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archive", "serve", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=30)


def test_cli_exits_2_on_a_missing_config_file(tmp_path: Path) -> None:
    proc = _serve(["--config", "missing.toml"], tmp_path)
    assert proc.returncode == 2
    assert "missing.toml" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("text", "named"), [
    ('[ingest]\nduplicate_policy = "sometimes"\n', "duplicate_policy"),
    ('[log]\nlevel = "verbose"\n', "level"),
])
def test_cli_exits_2_on_a_bad_setting(tmp_path: Path, text: str, named: str) -> None:
    write(tmp_path, text)
    proc = _serve(["--config", "archive.toml"], tmp_path)
    assert proc.returncode == 2
    assert named in proc.stderr
    assert "Traceback" not in proc.stderr
