"""Measuring the harmonizer honestly: k-fold cross-validation over MIDRC's mapping table and
frequency-weighted coverage of real input.

Folds are drawn by normalized description, so a held-out description is in no table the
harmonizer of that fold has: every held-out row is placed by the matcher. Precision is how many of
the placed rows got MIDRC's code; coverage how many were placed.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from archive.harmonize import Harmonizer
from archive.harmonize.descriptor import describe, named_families, primary, study_families, words
from archive.harmonize.matcher import reading_family
from archive.harmonize.model import Placement, Procedure
from archive.harmonize.normalize import normalize_description
from archive.harmonize.table import MappingRow, read_rows


@dataclass
class Tally:
    rows: int = 0
    placed: int = 0
    correct: int = 0

    @property
    def precision(self) -> float:
        return self.correct / self.placed if self.placed else 1.0

    @property
    def coverage(self) -> float:
        return self.placed / self.rows if self.rows else 0.0

    def add(self, placement: Placement, expected: str) -> None:
        self.rows += 1
        if placement.mapped:
            self.placed += 1
            self.correct += placement.code == expected


@dataclass
class Report:
    overall: Tally = field(default_factory=Tally)
    by_family: dict[str, Tally] = field(default_factory=dict)
    errors: list[tuple[MappingRow, Placement]] = field(default_factory=list)
    misses: list[tuple[MappingRow, Placement]] = field(default_factory=list)
    hows: Counter[str] = field(default_factory=Counter)

    def add(self, row: MappingRow, placement: Placement) -> None:
        self.hows[placement.how] += 1
        family = primary(study_families(row.modalities)) or "(none)"
        for tally in (self.overall, self.by_family.setdefault(family, Tally())):
            tally.add(placement, row.code)
        if placement.mapped and placement.code != row.code:
            self.errors.append((row, placement))
        elif not placement.mapped:
            self.misses.append((row, placement))

    def table(self) -> str:
        """The figures per modality family, as a Markdown table."""
        lines = ["| family | rows | placed | precision | coverage |", "| --- | ---: | ---: | ---: | ---: |"]
        for name, t in [*sorted(self.by_family.items(), key=lambda kv: -kv[1].rows), ("all", self.overall)]:
            lines.append(f"| {name} | {t.rows} | {t.placed} | {t.precision:.1%} | {t.coverage:.1%} |")
        return "\n".join(lines)


def fold_of(description: str, k: int) -> int:
    """A stable fold for a description (CRC-32 of its normalized form)."""
    return zlib.crc32(normalize_description(description).encode()) % k


def unique_rows(rows: Iterable[MappingRow]) -> list[MappingRow]:
    """The table's rows once each, per (modality list, normalized description, code)."""
    seen: dict[tuple[object, ...], MappingRow] = {}
    for r in rows:
        seen.setdefault((frozenset(r.modalities), normalize_description(r.description), r.code), r)
    return list(seen.values())


def cross_validate(rows: list[MappingRow], vocabulary: dict[str, Procedure], k: int = 5) -> Report:
    """k-fold cross-validation: each fold placed by a harmonizer built from the other folds.

    Every fold starts from ``vocabulary``; its table adds the codes of the training rows. With
    MIDRC's filtering_attributes.csv this is the strict measure: a held-out row whose code no
    training row uses and the attributes lack cannot be placed right. With the shipped vocabulary
    every code of the table is known by its name, as in production."""
    report = Report()
    rows = unique_rows(rows)
    for fold in range(k):
        train = [r for r in rows if fold_of(r.description, k) != fold]
        test = [r for r in rows if fold_of(r.description, k) == fold]
        harmonizer = Harmonizer(dict(vocabulary), train)
        if {normalize_description(r.description) for r in test} & harmonizer.table.descriptions():
            raise RuntimeError("a held-out description is in its fold's table")
        for row in test:
            report.add(row, harmonizer.place(row.modalities, row.description))
    return report


@dataclass(frozen=True)
class Observed:
    modality: str
    description: str
    frequency: float


def read_observed(path: Path) -> list[Observed]:
    """study_descriptions_gen3.tsv: Modality, StudyDescription, frequency."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = read_rows(f, ("Modality", "StudyDescription", "frequency"), "\t")
    return [Observed(r["Modality"], r["StudyDescription"], float(r["frequency"] or 0)) for r in rows]


def weighted_coverage(harmonizer: Harmonizer, observed: list[Observed]) -> tuple[float, float]:
    """(share of studies placed, share placed by exact or override lookup), weighted by frequency."""
    total = placed = exact = 0.0
    for o in observed:
        p = harmonizer.place(o.modality, o.description)
        total += o.frequency
        placed += o.frequency * p.mapped
        exact += o.frequency * (p.how in ("exact", "override"))
    return placed / total, exact / total


def reading(row: MappingRow) -> tuple[object, ...] | None:
    """What the matcher reads a row's description as (None: it contradicts its modality)."""
    family = reading_family(study_families(row.modalities), named_families(words(row.description)))
    return None if family is None else describe(row.description, family).key()


def readings(rows: Iterable[MappingRow]) -> dict[tuple[object, ...], Counter[str]]:
    """The codes MIDRC gives to each reading (descriptions that read into the same features)."""
    out: dict[tuple[object, ...], Counter[str]] = {}
    for r in unique_rows(rows):
        key = reading(r)
        if key is not None:
            out.setdefault(key, Counter())[r.code] += 1
    return out


def self_consistency(rows: Iterable[MappingRow]) -> float:
    """How many of MIDRC's rows carry the code most rows of the same reading carry: the ceiling
    of precision at full coverage for any method that sees only what the words say."""
    groups = readings(rows).values()
    return sum(c.most_common(1)[0][1] for c in groups) / sum(sum(c.values()) for c in groups)


def errors_midrc_also_makes(report: Report, rows: Iterable[MappingRow]) -> int:
    """Errors whose code MIDRC itself gives to another description of the same reading."""
    groups = readings(rows)
    return sum(groups.get(reading(row), Counter())[placed.code] > 0 for row, placed in report.errors)


def oracle_precision(rows: Iterable[MappingRow], coverage: float) -> float:
    """The precision of an oracle that knows every label and places whole readings with their
    majority code, most consistent readings first, until ``coverage`` of the rows are placed: an
    upper bound for any method that decides by what the words say."""
    groups = sorted(readings(rows).values(), key=lambda c: (-c.most_common(1)[0][1] / sum(c.values()),
                                                             -sum(c.values())))
    total = sum(sum(c.values()) for c in groups)
    placed = correct = 0
    for counter in groups:
        placed += sum(counter.values())
        correct += counter.most_common(1)[0][1]
        if placed >= coverage * total:
            break
    return correct / placed
