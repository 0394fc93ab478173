"""Running a :class:`Query`: the one search path of QIDO-RS and C-FIND (and cohorts later),
and the instance list that WADO-RS, C-MOVE and C-GET retrieve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


async def search(engine: AsyncEngine, query: Query, limit: int, base: str) -> SearchResult:
    """Up to ``limit`` matches of ``query`` (from ``query.offset``) as DICOM JSON."""
    async with engine.connect() as conn:
        rows = (await conn.execute(build_select(query, limit + 1))).all()
        more = len(rows) > limit
        rows = rows[:limit]
        extra = await extra_attributes(conn, query, rows)
    return SearchResult(to_json(rows, query, base, extra), more)


async def matching_instances(engine: AsyncEngine, query: Query,
                             limit: int = 1_000_000) -> list[StoredInstance]:
    """Every stored instance below the entities ``query`` matches, in stable order."""
    inst_query = Query(Level.INSTANCE, list(query.matches), fuzzy=query.fuzzy)
    async with engine.connect() as conn:
        rows = (await conn.execute(build_select(inst_query, limit))).all()
    return [StoredInstance(r.studies__study_uid, r.series__series_uid, r.instances__sop_uid,
                           r.instances__sop_class_uid, r.instances__transfer_syntax_uid,
                           r.instances__storage_key, r.instances__size) for r in rows]
