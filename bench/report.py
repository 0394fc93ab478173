"""Statistics and printing: percentiles, aligned tables, and the final summary against the targets."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A plain aligned text table; the first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


@dataclass
class Target:
    """One figure beside its target. ``value`` None means the figure could not be measured.
    An ``informative`` target (one for later) shows "met"/"not met" rather than PASS/FAIL."""

    name: str
    value: float | None
    shown: str
    target: str
    passed: bool | None
    informative: bool = False

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "n/a"
        if self.informative:
            return "met (info)" if self.passed else "not met (info)"
        return "PASS" if self.passed else "FAIL"

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "value": self.value, "shown": self.shown, "target": self.target,
                "verdict": self.verdict, "informative": self.informative}


def at_most(name: str, value: float | None, limit: float, unit: str, note: str = "") -> Target:
    """``note`` is shown after the value (e.g. a related figure)."""
    if value is None:
        return Target(name, None, "not measured", f"< {limit:g} {unit}", None)
    shown = f"{value:.1f} {unit}" + (f" {note}" if note else "")
    return Target(name, value, shown, f"< {limit:g} {unit}", value < limit)


def ratio_at_least(name: str, value: float | None, reference: float | None, share: float, unit: str
                   ) -> Target:
    target = f">= {share:.0%} of limit"
    if value is None or not reference:
        return Target(name, None, "not measured", target, None)
    ratio = value / reference
    shown = f"{value:.1f} {unit} = {ratio:.0%} of {reference:.1f} {unit}"
    return Target(name, ratio, shown, target, ratio >= share)


def informative_ratio(name: str, value: float | None, reference: float | None, share: float, unit: str,
                      reference_name: str, extra: str = "") -> Target:
    """``value`` against ``share`` of ``reference`` as an informative target; the value is shown even
    when there is no reference (``extra`` after it, e.g. the rate in other units)."""
    target = f">= {share:.0%} of {reference_name} (informative)"
    if value is None:
        return Target(name, None, "not measured", target, None, True)
    shown = f"{value:.1f} {unit}" + (f" ({extra})" if extra else "")
    if not reference:
        return Target(name, value, f"{shown}; {reference_name} not run", target, None, True)
    ratio = value / reference
    shown = f"{shown} = {ratio:.0%} of {reference:.1f} {unit}"
    return Target(name, ratio, shown, target, ratio >= share, True)


def figure(name: str, value: float | None, unit: str, extra: str = "") -> Target:
    """A figure with no target yet."""
    if value is None:
        return Target(name, None, "not measured", "none yet", None, True)
    shown = f"{value:.1f} {unit}" + (f" ({extra})" if extra else "")
    return Target(name, value, shown, "none yet", None, True)


def print_targets(targets: Sequence[Target]) -> None:
    print(table([(t.name, t.shown, t.target, t.verdict) for t in targets],
                ("figure", "measured", "target", "result")))


def side_by_side(results: dict[str, dict[str, Any]], rows: Sequence[tuple[str, str, str]], width: int = 18,
                 ratio_title: str | None = None) -> list[str]:
    """Print each figure of ``rows`` (key, field, label) for every target in ``results``, side by
    side; a figure whose answers had errors shows n/a and is reported once (the list returned).
    With ``ratio_title``, a last column gives the second target's value over the first's."""
    names = list(results)
    ratio_head = f"{ratio_title:>18}" if ratio_title else ""
    print("\n" + f"{'figure':52}" + "".join(f"{n:>{width}}" for n in names) + ratio_head)
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for key, field, label in rows:
        values: list[float | None] = []
        for name in names:
            fig = results[name].get(key, {})
            if fig.get("error_count"):
                if (name, key) not in seen:
                    seen.add((name, key))
                    problems.append(f"{name} {key}: {fig['error_count']} errors, e.g. {fig['errors'][0]}")
                values.append(None)
            else:
                values.append(fig.get(field, 0.0))
        cells = "".join(f"{'n/a' if v is None else f'{v:.1f}':>{width}}" for v in values)
        ratio = ""
        if ratio_title:
            first, second = (values + [None, None])[:2]
            shown = f"{second / first:.2f}x" if len(values) == 2 and first and second is not None else ""
            ratio = f"{shown:>18}"
        print(f"{label:52}{cells}{ratio}")
    return problems
