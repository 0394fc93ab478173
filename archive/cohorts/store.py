"""Saved cohorts: a name and the normalized filter object, under an id that never changes.

Only the definition is stored: the studies are selected again on every read, so a saved cohort
follows what the archive holds (new studies that match join it).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from archive.cohorts.filters import CohortFilters, FilterError, parse_filters
from archive.index.schema import cohorts

_ID = re.compile(r"^[0-9a-f]{32}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME = 256


@dataclass(frozen=True)
class SavedCohort:
    id: str
    name: str
    filters: dict[str, Any]  # normalized (archive.cohorts.filters)
    created: datetime  # UTC

    def parsed(self) -> CohortFilters:
        return parse_filters(self.filters)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "filters": self.filters,
                "created": self.created.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"}


def check_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FilterError("name", "give the cohort a name (a non-empty string)")
    name = value.strip()
    if len(name) > MAX_NAME:
        raise FilterError("name", f"is longer than {MAX_NAME} characters")
    if _CONTROL.search(name):
        raise FilterError("name", "contains a control character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FilterError("name", "is not valid Unicode text") from None
    return name


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def _row(row: Any) -> SavedCohort:
    return SavedCohort(row.id, row.name, json.loads(row.filters), row.created)


async def save(engine: AsyncEngine, name: str, filters: CohortFilters) -> SavedCohort:
    """Store a new cohort (``name`` as :func:`check_name` returns it)."""
    cohort = SavedCohort(uuid.uuid4().hex, name, filters.to_json(),
                         datetime.now(UTC).replace(tzinfo=None, microsecond=0))
    async with engine.begin() as conn:
        await conn.execute(insert(cohorts).values(
            id=cohort.id, name=cohort.name, filters=json.dumps(cohort.filters, separators=(",", ":")),
            created=cohort.created))
    return cohort


async def get(engine: AsyncEngine, cohort_id: str) -> SavedCohort | None:
    if not valid_id(cohort_id):
        return None
    async with engine.connect() as conn:
        row = (await conn.execute(select(cohorts).where(cohorts.c.id == cohort_id))).first()
    return _row(row) if row is not None else None


async def list_all(engine: AsyncEngine) -> list[SavedCohort]:
    """Every saved cohort, oldest first."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(cohorts).order_by(cohorts.c.created, cohorts.c.id))).all()
    return [_row(r) for r in rows]


async def remove(engine: AsyncEngine, cohort_id: str) -> bool:
    """Delete a saved cohort (its definition only: no study is touched); False if unknown."""
    if not valid_id(cohort_id):
        return False
    async with engine.begin() as conn:
        result = await conn.execute(delete(cohorts).where(cohorts.c.id == cohort_id))
    return bool(result.rowcount)
