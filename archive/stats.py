"""``imaging-archive stats``: what the archive holds. Patients, studies, series, instances and bytes
(as stored), in all and by release state (the cohort counts of :mod:`archive.cohorts.query` over
one state at a time), and by modality (a study with series of two modalities counts under both;
series, instances and bytes under exactly one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy import func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine

from archive.auth import ALL, STATES, Visibility
from archive.cohorts import cohort_counts, parse_filters
from archive.index.schema import instances, series, studies

_COLUMNS = ("patients", "studies", "series", "instances", "bytes")


@dataclass
class ArchiveStats:
    totals: dict[str, int]
    release_states: dict[str, dict[str, int]]
    modalities: dict[str, dict[str, int]]  # "" for series without a Modality

    def to_json(self) -> dict[str, Any]:
        return {"totals": self.totals, "release_states": self.release_states, "modalities": self.modalities}

    def print(self, out: TextIO) -> None:
        rows = [("total", self.totals)]
        rows += [(f"  {state}", c) for state, c in self.release_states.items()]
        rows += [(f"  {modality or '(none)'}", c) for modality, c in self.modalities.items()]
        out.write(f"{'':16}" + "".join(f"{name:>14}" for name in _COLUMNS) + "\n")
        for i, (label, counts) in enumerate(rows):
            if i == 1:
                out.write("by release state:\n")
            if i == 1 + len(self.release_states):
                out.write("by modality:\n")
            out.write(f"{label:16}" + "".join(f"{counts[name]:>14,}" for name in _COLUMNS) + "\n")


async def _by_modality(engine: AsyncEngine) -> dict[str, dict[str, int]]:
    # A literal, not a bound parameter: PostgreSQL matches GROUP BY to the select list textually,
    # and two bound parameters are two different expressions to it.
    modality = func.coalesce(series.c.modality, literal_column("''"))
    stmt = (select(modality, func.count(func.distinct(studies.c.patient_pk)),
                   func.count(func.distinct(series.c.study_pk)), func.count(func.distinct(series.c.pk)),
                   func.count(instances.c.pk), func.coalesce(func.sum(instances.c.size), 0))
            .select_from(series.join(studies, series.c.study_pk == studies.c.pk)
                         .join(instances, instances.c.series_pk == series.c.pk))
            .group_by(modality).order_by(func.count(instances.c.pk).desc()))
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return {row[0]: dict(zip(_COLUMNS, (int(v) for v in row[1:]), strict=True)) for row in rows}


async def archive_stats(engine: AsyncEngine) -> ArchiveStats:
    everything = parse_filters({})
    totals = (await cohort_counts(engine, everything, ALL)).to_json()
    states = {state: (await cohort_counts(engine, everything, Visibility(frozenset({state})))).to_json()
              for state in STATES}
    return ArchiveStats(totals, states, await _by_modality(engine))
