"""A throw-away PostgreSQL server for the tests: ``initdb`` into a temporary folder, ``postgres``
on a free loopback port, a database per archive made from a template already at the head schema
revision (``CREATE DATABASE … TEMPLATE``: a few ms instead of creating every table), all removed
at the end of the session.

The binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``),
or from ``PATH``. PostgreSQL refuses to run as root: as root the server runs as the ``postgres``
user (or ``nobody``).

Which database an archive under a folder uses is decided here (:func:`database_url`): SQLite in the
folder, or, while a PostgreSQL variant of a test runs (:func:`activate`), that folder's own
database on the server. The same folder always gets the same database, as it gets the same SQLite
file.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from archive.index.db import create_engine, init_schema

BACKENDS = ("sqlite", "postgresql")
TEMPLATE = "archive_template"
T = TypeVar("T")


def find_bindir() -> Path | None:
    """The folder of ``initdb`` and ``postgres``: Debian's newest version, else from PATH."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).parent
    return None


def _run_as() -> str | None:
    """The user to run the server as when we are root (PostgreSQL refuses root), else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists")


def _locales() -> list[list[str]]:
    """initdb's locale options, best first. The databases compare text in an English collation,
    where punctuation does not sort as bytes, as on many real servers: the archive must not depend
    on C ordering. ICU's en-US (PostgreSQL 15+) is the same on every machine; else the system's
    en_US.UTF-8 when it has one; else C.UTF-8."""
    choices = [["--locale-provider=icu", "--icu-locale=en-US", "--locale=C.UTF-8"]]
    try:
        available = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        available = ""
    if "en_US.utf8" in available.split():
        choices.append(["--locale=en_US.UTF-8"])
    return [*choices, ["--locale=C.UTF-8"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_thread(work: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a loop of its own, in a thread: callers may be inside a
    test's running event loop, where ``asyncio.run`` is not allowed."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(work())).result()


class Cluster:
    """One PostgreSQL server on 127.0.0.1 with its data folder; stop() removes everything."""

    def __init__(self, bindir: Path, settings: dict[str, str] | None = None) -> None:
        self.bindir = bindir
        self.settings = settings or {}  # more server settings (postgres -c NAME=VALUE)
        self.user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="imaging-archive-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._databases: dict[Path, str] = {}
        self._count = 0

    def _as_user(self) -> dict[str, Any]:
        """Popen arguments that run the program as ``self.user`` (no intermediate process: the
        server gets our signals itself)."""
        if not self.user:
            return {}
        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def start(self, timeout: float = 60) -> None:
        if self.user:
            shutil.chown(self.root, self.user)
        for locale in _locales():
            made = subprocess.run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                   "--auth=trust", "--encoding=UTF8", *locale],
                                  capture_output=True, timeout=120, cwd=self.root, **self._as_user())
            if made.returncode == 0:
                break
            shutil.rmtree(self.data, ignore_errors=True)
        else:
            raise RuntimeError(f"initdb failed: {made.stderr.decode(errors='replace')[-2000:]}")
        # A throw-away server: no fsync (a crash loses it anyway), no Unix socket (only TCP).
        with open(self.root / "postgres.log", "wb") as log:  # the server writes to its own copy
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=300", "-c", "shared_buffers=64MB",
                 *(arg for name, value in self.settings.items() for arg in ("-c", f"{name}={value}"))],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, **self._as_user())
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_tail()}")
            try:
                self.execute("SELECT 1")
                break
            except (OSError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start: {self.log_tail()}") from None
                time.sleep(0.1)
        self.execute(f'CREATE DATABASE "{TEMPLATE}"')
        # The template is made the way the archive makes a new index: create_all, then stamp.
        _in_thread(lambda: _init(self.url(TEMPLATE)))

    def log_tail(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        async def run() -> None:
            conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user="postgres",
                                         database=database, timeout=5)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        _in_thread(run)

    def new_database(self, template: str | None = TEMPLATE) -> str:
        """A new database (a copy of the template at head, or empty with ``template=None``); its name."""
        with self._lock:
            self._count += 1
            name = f"t{self._count}"
        self.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def database_for(self, root: Path, empty: bool = False) -> str:
        """The URL of the database of the archive under ``root``, made on first use (at the head
        revision, or ``empty``)."""
        key = Path(root).resolve()
        with self._lock:
            name = self._databases.get(key)
        if name is None:
            name = self.new_database(None if empty else TEMPLATE)
            with self._lock:
                name = self._databases.setdefault(key, name)
        return self.url(name)

    def drop_databases(self) -> None:
        """Drop the archives' databases (their servers and engines are gone by now)."""
        with self._lock:
            names = list(self._databases.values())
            self._databases.clear()
        for name in names:
            self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: PostgreSQL's fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


async def _init(url: str) -> None:
    engine = create_engine(url)
    try:
        await init_schema(engine)
    finally:
        await engine.dispose()


# The cluster of the PostgreSQL variant running now; None: archives use SQLite.
_active: Cluster | None = None


def activate(cluster: Cluster | None) -> None:
    global _active
    _active = cluster


def database_url(root: Path, empty: bool = False) -> str:
    """The index URL of the archive under ``root``: its SQLite file, or its PostgreSQL database
    while a PostgreSQL variant runs (made at the head revision on first use, or ``empty``, as a
    new SQLite file is)."""
    if _active is None:
        return f"sqlite+aiosqlite:///{Path(root) / 'index.db'}"
    return _active.database_for(root, empty)


def active() -> Cluster | None:
    return _active
