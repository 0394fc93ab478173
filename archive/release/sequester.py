"""Sequestration: which patients of the commons are held back (sequestered) for the independent
evaluation of algorithms, and which are open, chosen as MIDRC chooses its sequestered set.

Whole patients are assigned, never parts of a patient, per site, by stratified random sampling.
A patient's **cell** is (its primary modality, its site, its stratum): the primary modality is the
most frequent modality of the input among those the patient has (modalities are processed from
the most to the least frequent and a patient is assigned once, at the first that it has); the
stratum is the patient's values of ``SequesterConfig.strata`` (COVID-19 status x CDC age band x
race x sex x ethnicity by default). In a cell of at least ``min_stratum`` patients the
sequestered count is exactly ``round_half_up(fraction * size)``; a smaller cell draws each patient
on its own, sequestered with probability ``fraction``. Patients arriving later are assigned by
:func:`assign_new`, which keeps their cell's running balance. docs/sequestration.md states the
rule and its guarantees.

Pure functions over plain data, no database: the caller reads :class:`PatientRecord` s, calls
:func:`sequester` or :func:`assign_new` and writes the decisions (and their rule, for the log).
Randomness is a SHA-256 of (seed, site, patient id), so results depend on neither the order of the
input nor the Python version.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

# Release states, as stored in patients.release_state (the same strings as archive.auth's).
OPEN, SEQUESTERED, QUARANTINED = "open", "sequestered", "quarantined"
_STATES = (None, OPEN, SEQUESTERED, QUARANTINED)

UNKNOWN = "unknown"  # the category of a missing value, in every attribute
NO_MODALITY = "(none)"  # the "modality" of a patient without images (clinical data only), last
# CDC age bands (as CDC's COVID-19 data tracker groups ages): each band's lowest age and name, in
# order. The one definition of the bands: the sequestration strata (age_band) and the cohorts'
# age_group facet (archive.cohorts.query, in SQL) are both made from it.
AGE_BAND_STARTS = ((0, "0-17"), (18, "18-29"), (30, "30-39"), (40, "40-49"), (50, "50-64"),
                   (65, "65-74"), (75, "75-84"), (85, "85+"))
OVER_89_BAND = "85+"  # age_at_index_gt89 = Yes: the age is only a flag, never a number
AGE_BANDS = (*(name for _, name in AGE_BAND_STARTS), UNKNOWN)

STRATA = ("covid", "age_band", "race", "sex", "ethnicity")  # what a stratum may be made of
REPORT_ATTRIBUTES = ("covid", "age_band", "race", "sex", "ethnicity", "site", "modality")
RULE_VERSION = "v1"

_Key = tuple[int, str, tuple[str, ...]]  # a cell: primary modality's rank, site, stratum
SPLIT, DRAW, BALANCE = "stratum split", "small-stratum draw", "running balance"


@dataclass(frozen=True)
class PatientRecord:
    """What the rule needs to know of a patient. ``covid`` is the case's ``covid19_positive``;
    ``age`` its ``age_at_index`` (None when unknown or over 89) and ``age_gt89`` its
    ``age_at_index_gt89 == "Yes"``. ``state`` is the current release state, None if unassigned."""

    patient_id: str
    site: str
    modalities: frozenset[str]
    covid: str | None
    age: int | None
    age_gt89: bool
    race: str | None
    sex: str | None
    ethnicity: str | None
    state: str | None = None

    def value(self, attribute: str) -> str:
        """The patient's category of a stratum attribute (``covid``, ``age_band``, ``race``,
        ``sex``, ``ethnicity``) or ``site``; a missing value is ``"unknown"``."""
        if attribute == "age_band":
            return age_band(self.age, self.age_gt89)
        if attribute not in STRATA and attribute != "site":
            raise ValueError(f"unknown attribute {attribute!r}")
        value = getattr(self, attribute)
        return value if value else UNKNOWN


@dataclass(frozen=True)
class SequesterConfig:
    """The rule's parameters. ``rule_version`` names the rule in the release log; change it with
    the code of the rule, not to tune a run."""

    fraction: float = 0.2
    strata: tuple[str, ...] = STRATA
    min_stratum: int = 5
    rule_version: str = RULE_VERSION

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:  # NaN too
            raise ValueError(f"fraction {self.fraction!r} is not between 0 and 1")
        unknown = [s for s in self.strata if s not in STRATA]
        if unknown:
            raise ValueError(f"unknown strata {', '.join(unknown)}: each must be one of {', '.join(STRATA)} "
                             "(site and modality always divide the patients)")
        if len(set(self.strata)) != len(self.strata):
            raise ValueError(f"strata {self.strata!r} name an attribute twice")
        if self.min_stratum < 1:
            raise ValueError(f"min_stratum {self.min_stratum!r} is below 1")

    def rule(self, seed: int) -> str:
        """The rule as the release log records it: everything that decides the outcome."""
        return (f"sequester {self.rule_version} seed={seed} fraction={self.fraction} "
                f"strata={','.join(self.strata) or '-'} min_stratum={self.min_stratum}")


@dataclass(frozen=True)
class Decision:
    """The new state of a patient that was unassigned, why, and the cell it was decided in."""

    patient_id: str
    state: str  # OPEN or SEQUESTERED
    reason: str  # "stratum split" or "small-stratum draw"
    site: str
    modality: str
    stratum: tuple[str, ...]


@dataclass(frozen=True)
class Refusal:
    """A cell whose exact split wants more sequestered patients than it has unassigned ones: the
    rest would have to come from patients already released as open, which are never moved."""

    site: str
    modality: str
    stratum: tuple[str, ...]
    short: int  # sequestered patients the split wanted and could not have
    open_patients: tuple[str, ...]  # the released patients it refused to move

    @property
    def reason(self) -> str:
        return (f"{self.short} more sequestered patient(s) wanted; the other patients of the stratum "
                "were already released as open and are never moved")


@dataclass(frozen=True)
class Cell:
    """One cell of a run: its patients before and after (quarantined ones are not counted)."""

    site: str
    modality: str
    stratum: tuple[str, ...]
    size: int
    method: str  # "stratum split" or "small-stratum draw"
    target: int | None  # sequestered patients the split wants; None for a draw
    open_before: int
    sequestered_before: int
    new_open: int
    new_sequestered: int

    @property
    def sequestered(self) -> int:
        return self.sequestered_before + self.new_sequestered


@dataclass
class Assignment:
    """The outcome of :func:`sequester`. ``decisions`` are the changes to write (all from
    unassigned); ``kept`` the patients whose state stays (open or sequestered already);
    ``skipped`` the quarantined patients, left out of everything."""

    rule: str
    modality_order: tuple[str, ...]
    decisions: dict[str, Decision] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    refusals: list[Refusal] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)

    def states(self) -> dict[str, str]:
        """Every non-quarantined patient's state after the run."""
        states = dict(self.kept)
        states.update((pid, d.state) for pid, d in self.decisions.items())
        return states


def age_band(age: int | None, gt89: bool) -> str:
    """The CDC age band (:data:`AGE_BAND_STARTS`) of an age at the index event: 0-17, 18-29,
    30-39, 40-49, 50-64, 65-74, 75-84, 85+; ``"unknown"`` without an age. The over-89 flag is 85+
    whatever the age says."""
    if gt89:
        return OVER_89_BAND
    if age is None:
        return UNKNOWN
    if age < 0:
        raise ValueError(f"age {age} is negative")
    return [name for start, name in AGE_BAND_STARTS if age >= start][-1]


def is_small_cell(count: int, minimum: int) -> bool:
    """True when :func:`suppress` hides ``count``: 1 to ``minimum - 1``."""
    return 0 < count < minimum


def suppress(count: int, minimum: int = 10) -> int | str:
    """A public aggregate count with small cells suppressed: 0 stays 0, 1 to ``minimum - 1``
    become ``"<minimum"`` (``"<10"``), larger counts stay. Zero is shown because it discloses no
    patient (as CDC WONDER and most data commons do); ``minimum = 1`` suppresses nothing."""
    if count < 0:
        raise ValueError(f"count {count} is negative")
    if minimum < 1:
        raise ValueError(f"minimum {minimum} is below 1")
    return f"<{minimum}" if is_small_cell(count, minimum) else count


def modality_order(patients: Iterable[PatientRecord]) -> tuple[str, ...]:
    """Modalities from the most to the least frequent, counting patients (a patient with two CT
    studies counts once); ties by name, so the order never depends on the input's order."""
    counts = Counter(m for p in patients for m in p.modalities if m)
    return tuple(sorted(counts, key=lambda m: (-counts[m], m)))


def _uniform(seed: int, site: str, patient_id: str) -> float:
    """The patient's random number in [0, 1) for this seed: a hash, so it is the same whatever
    the order of the input, the other patients, the Python or the numpy version."""
    digest = hashlib.sha256(f"sequester\x1f{seed}\x1f{site}\x1f{patient_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2 ** 53


def _exact(fraction: float) -> Fraction:
    # The decimal the user wrote (0.2 is 1/5, not the binary double just above it), so that the
    # half-up rounding of fraction * size is exact: 0.3 * 5 is 1.5, rounded to 2.
    return Fraction(str(float(fraction)))


def _round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def _cell_key(p: PatientRecord, rank: Mapping[str, int], strata: Sequence[str]) -> _Key:
    """(rank of the primary modality, site, stratum); no modality ranks after every modality."""
    primary = min((rank[m] for m in p.modalities if m), default=len(rank))
    return primary, p.site, tuple(p.value(s) for s in strata)


def _check(patients: Sequence[PatientRecord]) -> None:
    seen: set[str] = set()
    for p in patients:
        if p.patient_id in seen:
            raise ValueError(f"patient {p.patient_id!r} is given twice")
        seen.add(p.patient_id)
        if p.state not in _STATES:
            raise ValueError(f"patient {p.patient_id!r}: unknown release state {p.state!r}")


def sequester(patients: Sequence[PatientRecord], cfg: SequesterConfig | None = None,
              seed: int = 0) -> Assignment:
    """Assign every unassigned patient to open or sequestered; see the module's docstring.

    A cell of ``size >= cfg.min_stratum`` patients (open, sequestered and unassigned; quarantined
    ones do not count) ends with ``round_half_up(fraction * size)`` sequestered when it can: the
    unassigned patients are ordered by their random number and the first ``target - already
    sequestered`` are sequestered, the others open. When that wants more than the unassigned
    patients, all of them are sequestered and the cell is a :class:`Refusal` (released patients
    are never moved); when the cell already has more sequestered than the target, they stay and
    the unassigned are open. In a smaller cell each unassigned patient is sequestered when its
    random number is below the fraction.
    """
    cfg = cfg or SequesterConfig()
    _check(patients)
    active = [p for p in patients if p.state != QUARANTINED]
    order = modality_order(active)
    rank = {m: i for i, m in enumerate(order)}
    names = (*order, NO_MODALITY)
    fraction = _exact(cfg.fraction)
    cells: dict[_Key, list[PatientRecord]] = defaultdict(list)
    for p in active:
        cells[_cell_key(p, rank, cfg.strata)].append(p)

    result = Assignment(rule=cfg.rule(seed), modality_order=order,
                        kept={p.patient_id: p.state for p in active if p.state is not None},
                        skipped=tuple(sorted(p.patient_id for p in patients if p.state == QUARANTINED)))
    # Cells in modality order (most frequent first), then site and stratum: the order of the
    # report. The outcome does not depend on it: each patient's draw is its own hash.
    for key in sorted(cells):
        members = cells[key]
        rank_, site, stratum = key
        modality = names[rank_]
        opened = [p.patient_id for p in members if p.state == OPEN]
        already = sum(p.state == SEQUESTERED for p in members)
        free = sorted((p for p in members if p.state is None),
                      key=lambda p: (_uniform(seed, p.site, p.patient_id), p.patient_id))
        size = len(members)
        target: int | None = None
        if size >= cfg.min_stratum:
            method = SPLIT
            target = _round_half_up(fraction * size)
            wanted = target - already
            take = max(0, min(wanted, len(free)))
            chosen = {p.patient_id for p in free[:take]}
            if wanted > len(free):
                result.refusals.append(Refusal(site, modality, stratum, wanted - len(free),
                                               tuple(sorted(opened))))
        else:
            method = DRAW
            chosen = {p.patient_id for p in free if _uniform(seed, p.site, p.patient_id) < fraction}
        for p in free:
            state = SEQUESTERED if p.patient_id in chosen else OPEN
            result.decisions[p.patient_id] = Decision(p.patient_id, state, method, site, modality, stratum)
        result.cells.append(Cell(site, modality, stratum, size, method, target, len(opened), already,
                                 len(free) - len(chosen), len(chosen)))
    return result


def assign_new(patient: PatientRecord, current: Sequence[PatientRecord], cfg: SequesterConfig | None = None,
               seed: int = 0, *, modalities_by_frequency: Sequence[str] | None = None) -> tuple[str, str]:
    """The state of a patient arriving after a run, and the reason: the same rule, applied one
    patient at a time. With ``n`` patients already assigned in the patient's cell (those of
    ``current`` that are open or sequestered), ``s`` of them sequestered:

    - ``n + 1 >= min_stratum`` (**running balance**): sequestered with probability
      ``clamp(fraction * (n + 1) - s, 0, 1)``. This keeps the cell's split: a cell whose
      sequestered count is within one patient of ``fraction * n`` (as a split leaves it) stays
      within one, whatever arrives; a cell behind catches up, a cell ahead gets open patients
      until it is back: ``|s - fraction * n|`` stays below 1 once it is, and shrinks until it is.
    - smaller cells (**small-stratum draw**): sequestered with probability ``fraction``.

    The draw is the patient's own random number (seed, site, patient id), so calling again with
    the same data gives the same answer. A patient that already has a state keeps it
    (``"unchanged: already open"``): open patients are never moved.

    The cell is found as :func:`sequester` finds it, with the modality order of ``current`` and
    the patient; unassigned and quarantined patients of ``current`` count for that order only.
    Give ``modalities_by_frequency`` (e.g. the ``modality_order`` of the last run, or one kept
    up to date) and ``current`` need only hold the patients of the patient's site.
    """
    cfg = cfg or SequesterConfig()
    if patient.state not in _STATES:
        raise ValueError(f"patient {patient.patient_id!r}: unknown release state {patient.state!r}")
    if patient.state is not None:
        return patient.state, f"unchanged: already {patient.state}"
    others = [p for p in current if p.patient_id != patient.patient_id and p.state != QUARANTINED]
    order = modalities_by_frequency
    if order is None:
        order = modality_order([*others, patient])
    rank = {m: i for i, m in enumerate(order)}
    # Modalities the given order does not know (e.g. the new patient's) come after those it does.
    unknown = {m for p in (*others, patient) for m in p.modalities if m} - rank.keys()
    rank.update((m, len(rank) + i) for i, m in enumerate(sorted(unknown)))
    key = _cell_key(patient, rank, cfg.strata)
    n = s = 0
    for p in others:
        if p.state in (OPEN, SEQUESTERED) and p.site == patient.site \
                and _cell_key(p, rank, cfg.strata) == key:
            n += 1
            s += p.state == SEQUESTERED
    u = _uniform(seed, patient.site, patient.patient_id)
    fraction = _exact(cfg.fraction)
    if n + 1 < cfg.min_stratum:
        # As in a run: a small cell has no count to keep, each patient is drawn on its own. (A
        # running balance there would catch up on the draws' shortfalls but could never give back
        # their excesses, and so drift above the fraction.)
        return (SEQUESTERED if u < fraction else OPEN), f"{DRAW}: {n} assigned in the stratum"
    chance = min(Fraction(1), max(Fraction(0), fraction * (n + 1) - s))
    state = SEQUESTERED if u < chance else OPEN
    return state, f"{BALANCE}: {s} of {n} sequestered in the stratum, p={float(chance):.2f}"


def js_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """The Jensen-Shannon distance (base 2, in [0, 1]) between two distributions given as counts
    or weights over the same categories: the square root of the JS divergence, the mean
    Kullback-Leibler divergence of each from their mixture. NaN when either is empty."""
    if len(p) != len(q):
        raise ValueError("the distributions have different categories")
    sp, sq = float(sum(p)), float(sum(q))
    if sp <= 0 or sq <= 0:
        return math.nan
    divergence = 0.0
    for a, b in zip(p, q, strict=True):
        a, b = a / sp, b / sq
        m = (a + b) / 2
        if a > 0:
            divergence += a / 2 * math.log2(a / m)
        if b > 0:
            divergence += b / 2 * math.log2(b / m)
    # Rounding can leave a hair below 0 or above 1.
    return math.sqrt(min(1.0, max(0.0, divergence)))


@dataclass(frozen=True)
class AttributeBalance:
    """One attribute's distribution in the open and in the sequestered set. For ``modality`` a
    patient counts once in each of its modalities."""

    attribute: str
    categories: tuple[str, ...]
    open_counts: tuple[int, ...]
    sequestered_counts: tuple[int, ...]
    js_distance: float


def _categories(attribute: str, counts: Counter[str]) -> tuple[str, ...]:
    if attribute == "age_band":
        return tuple(b for b in AGE_BANDS if b in counts)
    return tuple(sorted(counts, key=lambda c: (-counts[c], c)))


def balance_report(patients: Iterable[PatientRecord], states: Mapping[str, str] | None = None,
                   attributes: Sequence[str] = REPORT_ATTRIBUTES) -> list[AttributeBalance]:
    """Per attribute, the open and the sequestered distribution and their Jensen-Shannon
    distance. A patient's state is ``states[patient_id]`` (e.g. ``Assignment.states()``), else
    its ``state``; patients neither open nor sequestered are not counted."""
    chosen = []
    for p in patients:
        state = states.get(p.patient_id, p.state) if states is not None else p.state
        if state in (OPEN, SEQUESTERED):
            chosen.append((p, state))
    report = []
    for attribute in attributes:
        counts: dict[str, Counter[str]] = {OPEN: Counter(), SEQUESTERED: Counter()}
        for p, state in chosen:
            if attribute == "modality":
                counts[state].update({m for m in p.modalities if m} or {NO_MODALITY})
            else:
                counts[state][p.value(attribute)] += 1
        cats = _categories(attribute, counts[OPEN] + counts[SEQUESTERED])
        o = tuple(counts[OPEN][c] for c in cats)
        s = tuple(counts[SEQUESTERED][c] for c in cats)
        report.append(AttributeBalance(attribute, cats, o, s, js_distance(o, s)))
    return report


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:5.1f}%" if total else "    -"


def format_report(balances: Sequence[AttributeBalance], assignment: Assignment | None = None) -> str:
    """The balance report as text (for the administrator: counts are not suppressed)."""
    lines: list[str] = []
    if assignment is not None:
        new = Counter(d.state for d in assignment.decisions.values())
        kept = Counter(assignment.kept.values())
        lines += [f"rule: {assignment.rule}",
                  f"modalities, most frequent first: {', '.join(assignment.modality_order) or '-'}",
                  f"assigned now: {new[OPEN]} open, {new[SEQUESTERED]} sequestered; "
                  f"kept: {kept[OPEN]} open, {kept[SEQUESTERED]} sequestered; "
                  f"quarantined, left out: {len(assignment.skipped)}"]
        for r in assignment.refusals:
            lines.append(f"refused: site {r.site}, {r.modality}, {' / '.join(r.stratum) or '-'}: {r.reason} "
                         f"({len(r.open_patients)} open)")
        lines.append("")
    for b in balances:
        js = "undefined (a set is empty)" if math.isnan(b.js_distance) else f"{b.js_distance:.4f}"
        lines.append(f"{b.attribute}: Jensen-Shannon distance {js}")
        width = max([len(c) for c in b.categories] + [8])
        lines.append(f"  {'':<{width}}  {'open':>8} {'':>6}  {'sequestered':>11} {'':>6}")
        to, ts = sum(b.open_counts), sum(b.sequestered_counts)
        for c, o, s in zip(b.categories, b.open_counts, b.sequestered_counts, strict=True):
            lines.append(f"  {c:<{width}}  {o:>8} {_pct(o, to)}  {s:>11} {_pct(s, ts)}")
        lines.append(f"  {'total':<{width}}  {to:>8} {'':>6}  {ts:>11}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
