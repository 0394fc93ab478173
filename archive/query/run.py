"""Running a :class:`Query`: the one search path of QIDO-RS and C-FIND (and cohorts later),
and the instance list that WADO-RS, C-MOVE and C-GET retrieve."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from archive.index.reader import StoredInstance
from archive.query.attributes import Level
from archive.query.model import Query
from archive.query.results import extra_attributes, to_json
from archive.query.sql import build_select


@dataclass
class SearchResult:
    docs: list[dict[str, Any]]  # DICOM JSON; URLs carry the base URL token
    more: bool  # further matches exist beyond ``limit``


class QueryTimeout(Exception):
    """The search ran longer than its time limit and was interrupted."""


async def search(engine: AsyncEngine, query: Query, limit: int, base: str,
                 timeout: float = 0) -> SearchResult:
    """Up to ``limit`` matches of ``query`` (from ``query.offset``) as DICOM JSON.

    ``timeout`` (seconds, 0: none) bounds the SQL work: on SQLite the running statement is
    interrupted (sqlite3_interrupt, safe from the event loop's thread while aiosqlite's thread
    runs it), so a runaway query stops instead of holding a connection and a thread."""
    async with engine.connect() as conn:
        timer: asyncio.TimerHandle | None = None
        fired = False
        if timeout:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            interrupt = getattr(driver, "interrupt", None)

            def expire() -> None:
                nonlocal fired
                fired = True
                if interrupt is not None:
                    asyncio.ensure_future(interrupt())

            timer = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            async with asyncio.timeout(timeout * 2 + 1 if timeout else None):  # drivers without interrupt
                rows = (await conn.execute(build_select(query, limit + 1))).all()
                more = len(rows) > limit
                rows = rows[:limit]
                extra = await extra_attributes(conn, query, rows)
        except (OperationalError, TimeoutError) as exc:
            if fired:
                raise QueryTimeout(f"the query ran longer than {timeout:g} s") from exc
            raise
        finally:
            if timer is not None:
                timer.cancel()
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
