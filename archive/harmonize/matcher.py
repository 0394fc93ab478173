"""Placing descriptions the table has never seen.

A description is read into features (``descriptor``). Two sources of evidence then name a code:

* the mapped examples: table rows whose descriptions read into the same features, and the codes
  MIDRC's curators gave them (their conventions, e.g. that a portable chest film is "AP single
  view"); one vote per description;
* the vocabulary: codes whose Long Common Name reads into the same or a more general set of
  features ("XR Knee - right 3 Views" for "X-RAY KNEE 3 VIEWS - RIGHT"); together one vote,
  worth 0.85 for a name that equals the reading and less for each generalization, split between
  names that tie.

A code is only ever considered when its method fits the study's modality, its body regions equal
the description's, and nothing in it contradicts the description (side, contrast, angiography,
number of views, purpose). The confidence is the winning code's share of all votes (capped at
0.97), less 0.1 per unknown word and 0.2 when BodyPartExamined names another region. Below the
threshold (0.6) the description stays unmapped, with the reason: examples that disagree, names
that tie, or no code at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

from archive.harmonize.descriptor import (
    PRECEDENCE,
    Descriptor,
    body_part_regions,
    compatible,
    describe,
    named_families,
    primary,
    study_families,
    words,
)
from archive.harmonize.model import Placement, Procedure
from archive.harmonize.table import MappingRow, families_of

THRESHOLD = 0.6
GENERAL = 0.3  # the code is more general than the description on one feature
SPECIFIC = 0.5  # the code asserts one thing the description does not say
IMPLIED = 0.1  # the code says what the description implies
_VIEW_RANGES = {"1": (1, 1), "2": (2, 2), "3": (3, 3), "4": (4, 4), "1-2": (1, 2), "2-3": (2, 3),
                "2+": (2, 99), "3+": (3, 99), "4+": (4, 99)}


@dataclass(frozen=True)
class Candidate:
    procedure: Procedure
    families: frozenset[str]
    descriptor: Descriptor


@dataclass(frozen=True)
class Query:
    modalities: tuple[str, ...]
    description: str  # normalized
    body_part: str = ""
    n_images: int | None = None


class Matcher:
    """Places unseen descriptions from a vocabulary and the mapped examples."""

    def __init__(self, vocabulary: Iterable[Procedure], examples: Iterable[MappingRow],
                 threshold: float = THRESHOLD) -> None:
        self.threshold = threshold
        self.procedures = {p.code: p for p in vocabulary}
        self.candidates = [_candidate(p) for p in self.procedures.values()]
        self.votes: dict[tuple[object, ...], Counter[str]] = {}
        for row in examples:
            if row.code in self.procedures:
                self._learn(row)

    def _learn(self, row: MappingRow) -> None:
        """One vote per description and code, whatever the number of modalities it is written for."""
        readings = set()
        for fams in [study_families([m]) for m in row.modalities] or [frozenset()]:
            family = reading_family(fams, named_families(words(row.description)))
            if family is not None:  # None: the example contradicts its own modality
                readings.add(describe(row.description, family).key())
        for key in readings:
            self.votes.setdefault(key, Counter())[row.code] += 1

    def match(self, q: Query) -> Placement:
        fams = study_families(q.modalities)
        named = named_families(words(q.description))
        family = reading_family(fams, named)
        if family is None:
            return _unmapped(f"the description names {'/'.join(named)} but the study is "
                             f"{'/'.join(q.modalities)}")
        if family:
            return self._match_in(family, fams, q)
        return self._match_any_family(q)

    def _match_any_family(self, q: Query) -> Placement:
        """Neither the study nor the description names a method: read it in every family and
        keep the one answer that stands out."""
        tries = sorted((self._match_in(f, frozenset({f} - {""}), q) for f in (*PRECEDENCE, "")),
                       key=lambda p: -p.confidence)
        best, runner_up = tries[0], tries[1]
        if best.mapped and runner_up.mapped and best.confidence - runner_up.confidence < 0.1:
            return _unmapped(f"no modality, and read as {best.code} or {runner_up.code}")
        return best if best.mapped else _unmapped("no modality, and no reading places it")

    def _match_in(self, family: str, fams: frozenset[str], q: Query) -> Placement:
        d = describe(q.description, family, q.body_part, q.n_images)
        if family == "NM" and "ST" in q.modalities:
            d = replace(d, purposes=d.purposes | {"SPECT"})
        if not d.regions:
            return _unmapped("no body region recognised" + _unknown_note(d))
        pool = [c for c in self.candidates if _fits(c, fams, family)]
        mass, rule_note = _by_rule(d, pool)
        allowed = {c.procedure.code for c in pool}
        votes = Counter({k: v for k, v in self.votes.get(d.key(), Counter()).items() if k in allowed})
        if not mass and not votes:
            return _unmapped(rule_note + _unknown_note(d))
        return self._decide(d, q, mass, rule_note, votes)

    def _decide(self, d: Descriptor, q: Query, mass: dict[str, float], rule_note: str,
                votes: Counter[str]) -> Placement:
        """The code most probably MIDRC's: the examples' votes plus the vocabulary's, which
        counts as one vote weighted by how well the name matches (split between tied names)."""
        n = sum(votes.values())
        scores = {c: (votes[c] + mass.get(c, 0.0)) / (n + 1) for c in set(votes) | set(mass)}
        code = max(scores, key=lambda c: (scores[c], votes[c]))
        doubt = _body_part_penalty(d, q.body_part)
        confidence = min(0.97, scores[code]) - 0.1 * len(d.unknown) - doubt
        note = f"read as {d.summary()}"
        if n:
            note += f"; {votes[code]} of {n} mapped descriptions read so have {code}"
        if code in mass:
            note += f"; {rule_note}"
        note += _unknown_note(d) + (f"; BodyPartExamined {q.body_part} is elsewhere" if doubt else "")
        if confidence < self.threshold:
            return _unmapped(f"confidence {confidence:.2f} < {self.threshold} for {code}: {note}")
        return Placement(self.procedures[code], round(confidence, 3), note, "matched")


def reading_family(study: frozenset[str], named: tuple[str, ...]) -> str | None:
    """The family to read a description in: the one it names first when the study may hold it
    (a PET/CT stored as CT), else the study's; None when the two contradict ("CT CHEST" on a DX)."""
    if study and named and not compatible(study, frozenset(named)):
        return None
    if named and (not study or named[0] in study or compatible(study, frozenset(named[:1]))):
        return named[0]
    return primary(study)


def _by_rule(d: Descriptor, pool: list[Candidate]) -> tuple[dict[str, float], str]:
    """The codes whose names fit the reading best, each with its share of one vote."""
    scored = [(s, c) for c in pool if (s := distance(d, c.descriptor)) is not None]
    if not scored:
        return {}, f"no code in the vocabulary for {d.summary()}"
    best = min(s for s, _ in scored)
    tied = [c.procedure.code for s, c in scored if s == best]
    weight = (0.85 - best / 3) / len(tied)
    how = "equals" if best == 0 else "generalizes"
    if len(tied) > 1:
        return {c: weight for c in tied}, f"the names of {', '.join(sorted(tied))} tie"
    return {tied[0]: weight}, f"the code's name {how} the reading"


def _candidate(p: Procedure) -> Candidate:
    fams = frozenset(families_of(p))
    return Candidate(p, fams, describe(p.name, primary(fams)))


def _fits(c: Candidate, study: frozenset[str], family: str) -> bool:
    """Is the code's method the one the description is read in, and one the study's modality can
    have produced? Codes of no imaging method ("Bronchoscopy study") fit only descriptions of no
    method on studies of no known modality."""
    if family not in c.families and (family or c.families):
        return False
    return not study or bool(c.families & study)


def distance(d: Descriptor, c: Descriptor) -> float | None:
    """How much more general (or specific) code ``c`` is than description ``d``; None when the
    code contradicts the description or names another body region, side, contrast or purpose."""
    if d.regions != c.regions or d.angio != c.angio or d.purposes != c.purposes:
        return None
    # CT angiography is done with IV contrast: "CTA NECK" fits "CTA Neck vessels W contrast IV"
    implied_w = d.angio and d.family == "CT"
    parts = (_qualifier_distance(d.side, c.side), _qualifier_distance(d.contrast, c.contrast, implied_w),
             _qualifier_distance("P" * d.portable, "P" * c.portable), _view_distance(d.views, c.views))
    if any(p is None for p in parts):
        return None
    return sum(p for p in parts if p is not None) + _projection_distance(d.projections, c.projections)


def _qualifier_distance(mine: str, theirs: str, implied_w: bool = False) -> float | None:
    """A qualifier (side, contrast, portable) the code leaves out generalizes; one the code adds
    is a guess, and refused, unless the description implies it."""
    if mine == theirs:
        return 0.0
    if not theirs:
        return GENERAL
    return IMPLIED if implied_w and not mine and theirs == "W" else None


def _view_distance(mine: str, theirs: str) -> float | None:
    """Views of the description against the code's: "Views" (any number) generalizes a count;
    a count the description's range only partly covers is a guess; a count outside it, or a single
    view for a description that says "views" or "series", contradicts it."""
    a, b = _VIEW_RANGES.get(mine), _VIEW_RANGES.get(theirs)
    if a == b:
        return 0.0
    if b is None:
        return GENERAL
    if a is None:
        return None if mine == "N" and b == (1, 1) else SPECIFIC
    if b[0] <= a[0] and a[1] <= b[1]:
        return GENERAL
    return SPECIFIC if max(a[0], b[0]) <= min(a[1], b[1]) else None


def _projection_distance(mine: frozenset[str], theirs: frozenset[str]) -> float:
    extra, missing = set(mine - theirs), set(theirs - mine)
    if "FRONTAL" in extra and missing & {"AP", "PA"}:
        extra.discard("FRONTAL")  # frontal is AP or PA: a partial match, not two misses
        missing -= {"AP", "PA"}
        return GENERAL + GENERAL * len(extra) + SPECIFIC * len(missing)
    return GENERAL * len(extra) + SPECIFIC * len(missing)


def _body_part_penalty(d: Descriptor, body_part: str) -> float:
    """BodyPartExamined that shares no region with the description casts doubt on it."""
    regions = body_part_regions(body_part) if body_part else frozenset()
    return 0.2 if regions and not regions & d.regions else 0.0


def _unknown_note(d: Descriptor) -> str:
    return f"; unknown words: {' '.join(d.unknown)}" if d.unknown else ""


def _unmapped(reason: str) -> Placement:
    return Placement(None, 0.0, reason, "unmapped")

