"""Running a :class:`Query`: the one search path of QIDO-RS and C-FIND (cohorts share its deadline),
and the instance list that WADO-RS, C-MOVE and C-GET retrieve."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from archive.index.db import sqlstate
from archive.index.reader import StoredInstance
from archive.query.attributes import Level
from archive.query.model import Query
from archive.query.results import extra_attributes, to_json
from archive.query.sql import build_page_select, build_select


@dataclass
class SearchResult:
    docs: list[dict[str, Any]]  # DICOM JSON; URLs carry the base URL token
    more: bool  # further matches exist beyond ``limit``


class QueryTimeout(Exception):
    """The search ran longer than its time limit and was interrupted."""


@asynccontextmanager
async def deadline(conn: AsyncConnection, timeout: float) -> AsyncIterator[None]:
    """Bound the SQL work inside the block to ``timeout`` seconds (0: none), else QueryTimeout.

    On SQLite the running statement is interrupted (sqlite3_interrupt, safe from the event
    loop's thread while aiosqlite's thread runs it), so a runaway query stops instead of holding
    a connection and a thread. On PostgreSQL the server cancels each statement of the block that
    runs longer (statement_timeout, set for this transaction only); other drivers are cancelled a
    little later."""
    if not timeout:
        yield
        return
    if conn.dialect.name == "postgresql":
        async with _statement_timeout(conn, timeout):
            yield
        return
    fired = False
    interrupt = getattr((await conn.get_raw_connection()).driver_connection, "interrupt", None)

    def expire() -> None:
        nonlocal fired
        fired = True
        if interrupt is not None:
            asyncio.ensure_future(interrupt())

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        async with asyncio.timeout(timeout * 2 + 1):  # drivers without interrupt
            yield
    except (OperationalError, TimeoutError) as exc:
        if fired:
            raise QueryTimeout(f"the query ran longer than {timeout:g} s") from exc
        raise
    finally:
        timer.cancel()


@asynccontextmanager
async def _statement_timeout(conn: AsyncConnection, timeout: float) -> AsyncIterator[None]:
    await conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, round(timeout * 1000))}")
    try:
        async with asyncio.timeout(timeout * 2 + 1):  # the block's statements together
            yield
    except DBAPIError as exc:
        if sqlstate(exc) == "57014":  # query_canceled: the statement ran past statement_timeout
            raise QueryTimeout(f"the query ran longer than {timeout:g} s") from exc
        raise
    except TimeoutError as exc:
        raise QueryTimeout(f"the query ran longer than {timeout:g} s") from exc


async def search(engine: AsyncEngine, query: Query, limit: int, base: str,
                 timeout: float = 0) -> SearchResult:
    """Up to ``limit`` matches of ``query`` (from ``query.offset``) as DICOM JSON, within
    ``timeout`` seconds (0: none; see :func:`deadline`)."""
    async with engine.connect() as conn, deadline(conn, timeout):
        paged = build_page_select(query, limit + 1)
        rows = (await conn.execute(paged if paged is not None else build_select(query, limit + 1))).all()
        more = len(rows) > limit
        rows = rows[:limit]
        extra = await extra_attributes(conn, query, rows)
    return SearchResult(to_json(rows, query, base, extra), more)


async def matching_instances(engine: AsyncEngine, query: Query,
                             limit: int = 1_000_000) -> list[StoredInstance]:
    """Every stored instance below the entities ``query`` matches, in stable order."""
    inst_query = Query(Level.INSTANCE, list(query.matches), fuzzy=query.fuzzy, visible=query.visible)
    async with engine.connect() as conn:
        rows = (await conn.execute(build_select(inst_query, limit))).all()
    return [StoredInstance(r.studies__study_uid, r.series__series_uid, r.instances__sop_uid,
                           r.instances__sop_class_uid, r.instances__transfer_syntax_uid,
                           r.instances__storage_key, r.instances__size) for r in rows]
