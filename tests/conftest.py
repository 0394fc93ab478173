"""Shared fixtures: an app per test on a temporary folder, a real server subprocess, helpers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from archive.app import create_app
from archive.config import Config, from_dict
from tests import pg
from tests.samples import IN_CI, SHARED_SAMPLES, shared_available


def pytest_sessionstart(session: pytest.Session) -> None:
    if IN_CI and not shared_available():
        raise pytest.UsageError(f"CI=true but the shared DICOM samples are missing at {SHARED_SAMPLES}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "databases(*engines): run the test on SQLite and on PostgreSQL "
                                       "(tests/pg.py), or on the engines named")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Tests (or modules) marked `databases` run once per index engine. Module scope: a module's
    # shared archive (a module-scoped fixture that takes db_backend) is made once per engine.
    marker = metafunc.definition.get_closest_marker("databases")
    if marker is not None and "db_backend" in metafunc.fixturenames:
        metafunc.parametrize("db_backend", marker.args or pg.BACKENDS, indirect=True, scope="module")


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.Cluster]:
    """A throw-away PostgreSQL server for the session (skipped when PostgreSQL is not installed,
    a failure under CI)."""
    bindir = pg.find_bindir()
    if bindir is None:
        message = "PostgreSQL is not installed (Debian package postgresql)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    cluster = pg.Cluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module", autouse=True)
def db_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The index engine of this variant: "sqlite", or "postgresql" for the PostgreSQL variant of
    a test marked `databases`, during which every archive (make_config, LiveServer) gets a
    database of its own on the session's server. Module fixtures that make an archive take this
    fixture, so that each variant gets its own."""
    backend = getattr(request, "param", "sqlite")
    if backend != "postgresql":
        yield backend
        return
    cluster = request.getfixturevalue("postgres")
    pg.activate(cluster)
    try:
        yield backend
    finally:
        pg.activate(None)
        cluster.drop_databases()


def make_config(root: Path, **sections: dict) -> Config:
    data: dict = {"storage": {"path": str(root / "files")},
                  "database": {"url": pg.database_url(root)},
                  "dimse": {"enabled": False},  # DIMSE tests turn it on, on a free port
                  # codecs in threads (tests patch them); test_codec_processes covers the pool
                  "render": {"codec_processes": 0},
                  # parsing in threads too; test_parse_pool and the subprocess tests cover the pool
                  "ingest": {"parse_processes": 0},
                  "log": {"level": "warning"}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return from_dict(data, base_dir=root)


@pytest.fixture
def archive_config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def client(aiohttp_client, archive_config: Config):
    """An aiohttp test client on a fresh archive (SQLite + folder under tmp_path)."""
    return await aiohttp_client(create_app(archive_config))


def multipart(parts: list[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    """A multipart/related body of ``parts`` and its Content-Type."""
    boundary = uuid.uuid4().hex
    chunks = []
    for data in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="{part_type}"; boundary={boundary}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LiveServer:
    """``imaging-archive serve`` as a subprocess, as a user runs it."""

    def __init__(self, root: Path, extra_toml: str = "", dimse: bool = False) -> None:
        self.root = root
        self.port = free_port()
        self.dimse_port = free_port()
        self.config = root / "config.toml"
        self.config.write_text(
            f'[http]\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'[dimse]\nenabled = {str(dimse).lower()}\nport = {self.dimse_port}\n'
            f'[storage]\npath = "files"\n[database]\nurl = "{pg.database_url(root)}"\n'
            f'[log]\nlevel = "info"\n{extra_toml}', encoding="utf-8")
        self.log = open(root / "server.log", "wb")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        env = dict(os.environ)
        self.proc = subprocess.Popen([sys.executable, "-m", "archive", "serve", "--config", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.root / 'server.log').read_text()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet; or (serve --workers) listening, no worker accepting yet
            time.sleep(0.1)
        stop_process(self.proc)  # not left running (and restarting workers) after the test
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        self.log.close()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
