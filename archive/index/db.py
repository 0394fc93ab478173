"""Engine set-up: SQLite in WAL mode with durable commits, or PostgreSQL (asyncpg); schema
creation and version check."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy
from sqlalchemy import event, insert
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from archive.index import migrate
from archive.index.schema import SCHEMA_VERSION, metadata, schema_info

log = logging.getLogger("archive.index")
T = TypeVar("T")


class SchemaError(RuntimeError):
    """The database holds a schema this code does not know."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never wait on the writer. synchronous=FULL: a commit is on disk when it
    # returns, so an acknowledged instance survives power loss, not only a process crash.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    # PS3.4 matching is case-sensitive except for PN (which we match on upper-cased columns).
    cur.execute("PRAGMA case_sensitive_like=ON")
    cur.execute("PRAGMA cache_size=-8000")  # 8 MB a connection
    cur.close()


def create_engine(url: str, echo: bool = False) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    connect_args: dict[str, Any] = {}
    if parsed.drivername == "postgresql+asyncpg":
        # Timestamps the database makes (server defaults: now()) are UTC, as SQLite's are.
        connect_args["server_settings"] = {"timezone": "UTC", "application_name": "imaging-archive"}
    # A bounded pool: each SQLite connection has its own page cache (8 MB, see the pragmas).
    engine = create_async_engine(url, echo=echo, pool_size=5, max_overflow=5, connect_args=connect_args)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def sync_writer_engine(engine: AsyncEngine) -> Engine | None:
    """A synchronous engine on the same SQLite file, for the index writer's own thread (see
    IndexWriter); None for other databases, whose async drivers need no thread hand-offs."""
    url = engine.url
    if engine.dialect.name != "sqlite" or not url.database or url.database == ":memory:":
        return None
    sync = sqlalchemy.create_engine(url.set(drivername="sqlite+pysqlite"), pool_size=1,
                                    max_overflow=0, echo=engine.echo)
    event.listen(sync, "connect", _writer_connect)
    # BEGIN IMMEDIATE: the transaction takes the write lock before its first read, so writers of
    # several processes (serve --workers, the command line) wait for each other (busy_timeout)
    # instead of one failing when another committed between its read and its write.
    event.listen(sync, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return sync


def _writer_connect(dbapi_conn: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_conn, record)
    dbapi_conn.isolation_level = None  # transactions are begun by the "begin" event above


async def init_schema(engine: AsyncEngine) -> None:
    """Create the tables on a new database (at the head revision); refuse a database at another
    revision, naming the command that upgrades it."""
    async with engine.begin() as conn:
        await conn.run_sync(migrate.lock)  # processes starting together on a new database
        revision = await conn.run_sync(migrate.current)
        if revision is None:
            await conn.run_sync(metadata.create_all)
            await conn.execute(insert(schema_info).values(version=SCHEMA_VERSION))
            await conn.run_sync(migrate.stamp_head)
            return
        expected = migrate.head()
        if revision != expected:
            raise SchemaError(
                f"the index is at schema revision {revision}, this server needs {expected}: "
                "back it up, then run `imaging-archive db upgrade --config FILE`")


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (PostgreSQL's drivers give one), else None."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None)


async def using_engine(url: str, work: Callable[[AsyncEngine], Awaitable[T]], echo: bool = False) -> T:
    """``work(engine)`` on a fresh engine over an initialized index, disposed after: what the
    command-line tools (clinical, cohort, harmonize, release, sequester) run on."""
    engine = create_engine(url, echo)
    try:
        await init_schema(engine)
        return await work(engine)
    finally:
        await engine.dispose()


async def run_in_transaction(url: str, fn: Callable[..., T], *args: Any) -> T:
    """The synchronous ``fn(connection, *args)`` in one transaction of a fresh engine."""
    async def work(engine: AsyncEngine) -> T:
        async with engine.begin() as conn:
            return await conn.run_sync(fn, *args)

    return await using_engine(url, work)
