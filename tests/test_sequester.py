"""The sequestration rule (archive.release.sequester) on a generated population: balance (Jensen-
Shannon distances), whole patients, the exact split of large strata, reproducibility, released
patients never moved, quarantined ones left out, the running balance of new patients, and the
small-cell suppression of public counts. docs/sequestration.md quotes the distances measured here.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections import Counter, defaultdict

import pytest

from archive.release import (
    OPEN,
    QUARANTINED,
    SEQUESTERED,
    PatientRecord,
    SequesterConfig,
    age_band,
    assign_new,
    balance_report,
    format_report,
    js_distance,
    sequester,
    suppress,
)

# Four sites of different sizes and case mixes, roughly MIDRC's (COVID-19 positives and negatives,
# a middle-aged to old population, most White or Black, few Hispanic).
SITES = {"S1": 0.4, "S2": 0.3, "S3": 0.2, "S4": 0.1}
COVID = {"Yes": 0.45, "No": 0.48, "Not Reported": 0.05, "Indeterminate": 0.02}
_RACES = ("White", "Black or African American", "Asian", "Other", "Not Reported")
RACE = {site: dict(zip(_RACES, shares, strict=True)) for site, shares in {
    "S1": (0.50, 0.30, 0.06, 0.05, 0.09), "S2": (0.70, 0.15, 0.05, 0.04, 0.06),
    "S3": (0.40, 0.40, 0.08, 0.06, 0.06), "S4": (0.80, 0.05, 0.05, 0.05, 0.05)}.items()}
SEX = {"Female": 0.52, "Male": 0.47, "Not Reported": 0.01}
ETHNICITY = {"Not Hispanic or Latino": 0.78, "Hispanic or Latino": 0.14, "Not Reported": 0.08}
# Probability that a patient has images of each modality (at least one: DX otherwise).
MODALITIES = {"DX": 0.70, "CR": 0.35, "CT": 0.30, "MR": 0.05, "PT": 0.03}

N = 4000
SEEDS = range(20)
ATTRIBUTES = ("covid", "age_band", "race", "sex", "ethnicity", "site", "modality")
STRATUM_ATTRIBUTES = ("covid", "age_band", "race", "sex", "ethnicity", "site")


def _pick(r: random.Random, weights: dict[str, float]) -> str:
    # Only Random.random(): its sequence for a seed is the one thing Python promises to keep, so
    # the population (and the distances docs/sequestration.md quotes) stay the same.
    x, acc = r.random() * sum(weights.values()), 0.0
    for value, w in weights.items():
        acc += w
        if x < acc:
            return value
    return value


def population(n: int, seed: int = 7, prefix: str = "P") -> list[PatientRecord]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        site = _pick(r, SITES)
        race: str | None = _pick(r, RACE[site])
        if r.random() < 0.015:
            race = "American Indian or Alaska Native"
        elif r.random() < 0.005:
            race = None  # not given: "unknown"
        x, age, gt89 = r.random(), None, False
        if x < 0.03:
            gt89 = True
        elif x >= 0.05:  # 2% without an age
            age = int(min(89, max(0, r.gauss(58, 19))))
        mods = {m for m, p in MODALITIES.items() if r.random() < p} or {"DX"}
        out.append(PatientRecord(f"{prefix}-{site}-{i:05d}", site, frozenset(mods), _pick(r, COVID), age,
                                 gt89, race, _pick(r, SEX), _pick(r, ETHNICITY), None))
    return out


@pytest.fixture(scope="module")
def pop() -> list[PatientRecord]:
    return population(N)


@pytest.fixture(scope="module")
def runs(pop: list[PatientRecord]) -> dict[int, dict[str, str]]:
    return {seed: sequester(pop, SequesterConfig(), seed).states() for seed in SEEDS}


def _order(patients: list[PatientRecord]) -> list[str]:
    counts = Counter(m for p in patients for m in p.modalities)
    return sorted(counts, key=lambda m: (-counts[m], m))


def _cells(patients: list[PatientRecord]) -> dict[tuple[str, str, tuple[str, ...]], list[PatientRecord]]:
    """The cells, found independently of the module: (most frequent modality of the patient's,
    site, covid x age band x race x sex x ethnicity)."""
    order = _order(patients)
    cells: dict[tuple[str, str, tuple[str, ...]], list[PatientRecord]] = defaultdict(list)
    for p in patients:
        cells[_key(p, order)].append(p)
    return cells


def _key(p: PatientRecord, order: list[str]) -> tuple[str, str, tuple[str, ...]]:
    stratum = (p.covid or "unknown", age_band(p.age, p.age_gt89), p.race or "unknown",
               p.sex or "unknown", p.ethnicity or "unknown")
    return min(p.modalities, key=order.index), p.site, stratum


def _distances(patients: list[PatientRecord], states: dict[str, str]) -> dict[str, float]:
    return {b.attribute: b.js_distance for b in balance_report(patients, states)}


# -- the pieces ------------------------------------------------------------------------------------

def test_age_band_cdc_bands() -> None:
    cases = {0: "0-17", 17: "0-17", 18: "18-29", 29: "18-29", 30: "30-39", 39: "30-39", 40: "40-49",
             49: "40-49", 50: "50-64", 64: "50-64", 65: "65-74", 74: "65-74", 75: "75-84", 84: "75-84",
             85: "85+", 89: "85+"}
    for age, band in cases.items():
        assert age_band(age, False) == band, age
    assert age_band(None, False) == "unknown"
    assert age_band(None, True) == "85+"  # age_at_index_gt89 = Yes, no number
    assert age_band(40, True) == "85+"  # the flag wins
    with pytest.raises(ValueError):
        age_band(-1, False)


def test_suppress_small_cells() -> None:
    assert [suppress(c) for c in (0, 1, 9, 10, 11, 12345)] == [0, "<10", "<10", 10, 11, 12345]
    assert [suppress(c, 5) for c in (0, 4, 5)] == [0, "<5", 5]
    assert suppress(1, 1) == 1  # minimum 1 suppresses nothing
    with pytest.raises(ValueError):
        suppress(-1)
    with pytest.raises(ValueError):
        suppress(3, 0)


def test_js_distance_values() -> None:
    assert js_distance([5, 3, 2], [50, 30, 20]) == pytest.approx(0.0, abs=1e-9)  # counts or shares
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint: the maximum, base 2
    # P = (1, 0), Q = (1/2, 1/2), M = (3/4, 1/4): JSD = (log2(4/3) + (log2(2/3) + 1) / 2) / 2
    jsd = (math.log2(4 / 3) + (math.log2(2 / 3) + 1) / 2) / 2
    assert js_distance([1, 0], [1, 1]) == pytest.approx(math.sqrt(jsd))
    assert js_distance([3, 1], [1, 3]) == pytest.approx(js_distance([1, 3], [3, 1]))  # symmetric
    assert math.isnan(js_distance([0, 0], [1, 2]))
    with pytest.raises(ValueError):
        js_distance([1, 2], [1, 2, 3])


def _reference_js(p: list[int], q: list[int]) -> float:
    """The definition, written out another way (natural logarithms, then base 2)."""
    sp, sq = sum(p), sum(q)
    pp, qq = [x / sp for x in p], [x / sq for x in q]
    mm = [(a + b) / 2 for a, b in zip(pp, qq, strict=True)]

    def kl(a: list[float], b: list[float]) -> float:
        return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)

    return math.sqrt((kl(pp, mm) + kl(qq, mm)) / 2 / math.log(2))


def test_js_distance_agrees_with_the_definition() -> None:
    r = random.Random(3)
    for _ in range(50):
        k = r.randint(2, 9)
        p = [r.choice([0, r.randint(1, 500)]) for _ in range(k)]
        q = [r.randint(1, 500) for _ in range(k)]
        if sum(p) == 0:
            p[0] = 1
        assert js_distance(p, q) == pytest.approx(_reference_js(p, q), abs=1e-9)


def test_config_is_checked() -> None:
    for bad in ({"fraction": 1.5}, {"fraction": -0.1}, {"fraction": math.nan}, {"strata": ("site",)},
                {"strata": ("race", "race")}, {"min_stratum": 0}):
        with pytest.raises(ValueError):
            SequesterConfig(**bad)  # type: ignore[arg-type]
    cfg = SequesterConfig(fraction=0.1, strata=("covid", "sex"), min_stratum=8)
    assert cfg.rule(3) == "sequester v1 seed=3 fraction=0.1 strata=covid,sex min_stratum=8"


def test_bad_input_is_refused(pop: list[PatientRecord]) -> None:
    with pytest.raises(ValueError, match="twice"):
        sequester([pop[0], pop[1], pop[0]])
    with pytest.raises(ValueError, match="release state"):
        sequester([dataclasses.replace(pop[0], state="public")])


# -- balance ---------------------------------------------------------------------------------------

def test_balance_on_a_generated_population(pop: list[PatientRecord], runs: dict[int, dict[str, str]]) -> None:
    """4,000 patients, 4 sites, 5 modalities, seeds 0-19. Most cells of site x modality x covid x
    age band x race x sex x ethnicity hold fewer than 5 patients here (each drawn on its own), so
    the distances are those of sampling, about 30 % below a plain random split's, not near 0."""
    distances = {seed: _distances(pop, states) for seed, states in runs.items()}
    for attribute in ATTRIBUTES:
        values = [d[attribute] for d in distances.values()]
        assert max(values) < 0.07, (attribute, max(values))
        assert statistics.mean(values) < 0.04, (attribute, statistics.mean(values))
    # The same patients split by a coin per patient (no strata): stratification must do better.
    coin = [_distances(pop, {p.patient_id: SEQUESTERED if r.random() < 0.2 else OPEN for p in pop})
            for r in (random.Random(1000 + seed) for seed in SEEDS)]
    stratified = statistics.mean(sum(d.values()) for d in distances.values())
    plain = statistics.mean(sum(d.values()) for d in coin)
    assert stratified < 0.9 * plain, (stratified, plain)
    # And the overall share is the fraction, within the draws' noise (sd about 0.6 %).
    for states in runs.values():
        share = sum(s == SEQUESTERED for s in states.values()) / N
        assert abs(share - 0.2) < 0.02, share


def test_large_strata_are_split_exactly(pop: list[PatientRecord]) -> None:
    """A cell of n >= 5 patients has exactly round_half_up(0.2 n) = (2n + 5) // 10 sequestered;
    the patients of those cells are as balanced as rounding allows, whatever the seed."""
    cells = _cells(pop)
    assert sum(len(c) >= 5 for c in cells.values()) > 100  # the population has such cells
    for seed in (0, 1, 2):
        result = sequester(pop, SequesterConfig(), seed)
        states = result.states()
        split_patients = []
        for (modality, site, stratum), members in cells.items():
            sequestered = sum(states[p.patient_id] == SEQUESTERED for p in members)
            reasons = {result.decisions[p.patient_id].reason for p in members}
            if len(members) >= 5:
                assert sequestered == (2 * len(members) + 5) // 10, (modality, site, stratum)
                assert reasons == {"stratum split"}
                split_patients += members
            else:
                assert reasons == {"small-stratum draw"}
            for p in members:  # the module found the same cell
                d = result.decisions[p.patient_id]
                assert (d.modality, d.site, d.stratum) == (modality, site, stratum)
        # Rounding is all that separates the two sets there: in each category of each stratum
        # attribute the sequestered count is within half a patient per cell of 0.2 x its patients.
        for attribute in STRATUM_ATTRIBUTES:
            n: Counter[str] = Counter()
            held: Counter[str] = Counter()
            cells_of: Counter[str] = Counter()
            for members in cells.values():
                if len(members) >= 5:
                    value = members[0].value(attribute)
                    n[value] += len(members)
                    held[value] += sum(states[p.patient_id] == SEQUESTERED for p in members)
                    cells_of[value] += 1
            for value in n:
                assert abs(held[value] - 0.2 * n[value]) <= cells_of[value] / 2, (attribute, value)
        for attribute, distance in _distances(split_patients, states).items():
            if attribute != "modality":  # a patient's other modalities are not stratified
                assert distance < 0.03, (seed, attribute, distance)
    # The module's own account of its cells agrees.
    result = sequester(pop, SequesterConfig(), 0)
    for cell in result.cells:
        assert cell.size == len(cells[cell.modality, cell.site, cell.stratum])
        if cell.method == "stratum split":
            assert cell.sequestered == cell.target == (2 * cell.size + 5) // 10


def test_half_up_rounding_with_other_fractions() -> None:
    def cell(n: int) -> list[PatientRecord]:
        return [PatientRecord(f"X{i}", "S", frozenset({"CT"}), "Yes", 50, False, "White", "Male",
                              "Not Hispanic or Latino", None) for i in range(n)]
    expected = {(0.2, 5): 1, (0.2, 7): 1, (0.2, 8): 2, (0.3, 5): 2, (0.5, 5): 3, (0.5, 6): 3,
                (0.1, 5): 1, (0.1, 14): 1, (0.1, 15): 2, (0.0, 9): 0, (1.0, 9): 9}
    for (fraction, n), k in expected.items():
        states = sequester(cell(n), SequesterConfig(fraction=fraction), 1).states()
        assert Counter(states.values())[SEQUESTERED] == k, (fraction, n)


def test_whole_patients_one_state_each(pop: list[PatientRecord]) -> None:
    result = sequester(pop, SequesterConfig(), 1)
    states = result.states()
    assert set(states) == {p.patient_id for p in pop}
    assert set(states.values()) == {OPEN, SEQUESTERED}
    open_set = {pid for pid, s in states.items() if s == OPEN}
    sequestered_set = {pid for pid, s in states.items() if s == SEQUESTERED}
    assert not open_set & sequestered_set and len(open_set) + len(sequestered_set) == N
    # Each patient is in one cell, at its most frequent modality, whatever else it has.
    assert sum(c.size for c in result.cells) == N
    assert result.modality_order == ("DX", "CR", "CT", "MR", "PT")
    several = [p for p in pop if len(p.modalities) > 1]
    assert len(several) > 500
    for p in several:
        assert result.decisions[p.patient_id].modality == min(p.modalities, key=result.modality_order.index)


def test_modality_order_decides_the_cell() -> None:
    def patient(pid: str, *mods: str) -> PatientRecord:
        return PatientRecord(pid, "S", frozenset(mods), "No", 30, False, "Asian", "Female", "Not Reported")
    both = patient("both", "CT", "DX")
    dx_more = [patient(f"d{i}", "DX") for i in range(3)] + [patient("c0", "CT"), both]
    assert sequester(dx_more).decisions["both"].modality == "DX"
    ct_more = [patient(f"c{i}", "CT") for i in range(3)] + [patient("d0", "DX"), both]
    assert sequester(ct_more).decisions["both"].modality == "CT"
    tie = [patient("c0", "CT"), patient("d0", "DX"), both]  # 2 each: by name
    assert sequester(tie).modality_order == ("CT", "DX")
    none = sequester([patient("n", )]).decisions["n"]  # clinical data, no images yet
    assert none.modality == "(none)"


# -- reproducibility -------------------------------------------------------------------------------

def test_same_seed_same_result_other_seed_other_result(pop: list[PatientRecord]) -> None:
    first = sequester(pop, SequesterConfig(), 1)
    shuffled = list(pop)
    random.Random(5).shuffle(shuffled)
    again = sequester(shuffled, SequesterConfig(), 1)
    assert again.decisions == first.decisions  # neither the order of the input nor anything else
    assert again.cells == first.cells
    other = sequester(pop, SequesterConfig(), 2)
    seq1 = {pid for pid, s in first.states().items() if s == SEQUESTERED}
    seq2 = {pid for pid, s in other.states().items() if s == SEQUESTERED}
    assert len(seq1 ^ seq2) > len(seq1)  # mostly other patients, as independent samples would be


def test_a_larger_fraction_only_adds_patients(pop: list[PatientRecord]) -> None:
    """The cells and each patient's random number do not depend on the fraction, so the set
    sequestered at 0.1 is inside the set at 0.2 (same seed)."""
    def sequestered(fraction: float) -> set[str]:
        states = sequester(pop, SequesterConfig(fraction=fraction), 4).states()
        return {pid for pid, s in states.items() if s == SEQUESTERED}
    small, large = sequestered(0.1), sequestered(0.2)
    assert small < large
    assert 0.08 < len(small) / N < 0.12


# -- released and quarantined patients -------------------------------------------------------------

def _same(pid: str, n: int = 1, **kw: object) -> list[PatientRecord]:
    """n patients of one cell (site S, CT, one stratum), ids pid0, pid1, ..."""
    base = PatientRecord("", "S", frozenset({"CT"}), "Yes", 70, False, "White", "Female",
                         "Not Hispanic or Latino")
    return [dataclasses.replace(base, patient_id=f"{pid}{i}", **kw) for i in range(n)]  # type: ignore[arg-type]


def test_released_patients_are_never_moved() -> None:
    short = _same("open-a", 9, state=OPEN) + _same("new-a", 1)  # target 2: one short
    enough = _same("open-b", 8, state=OPEN, race="Asian") + _same("new-b", 2, race="Asian")  # target 2
    ahead = _same("seq-c", 3, state=SEQUESTERED, sex="Male") + _same("new-c", 7, sex="Male")  # target 2 < 3
    result = sequester(short + enough + ahead, SequesterConfig(), 1)
    states = result.states()
    assert result.kept == {p.patient_id: p.state for p in short + enough + ahead if p.state}
    assert not set(result.decisions) & set(result.kept)
    assert all(states[p.patient_id] == OPEN for p in short + enough if p.state == OPEN)
    assert states["new-a0"] == SEQUESTERED
    assert states["new-b0"] == states["new-b1"] == SEQUESTERED
    assert all(states[f"seq-c{i}"] == SEQUESTERED for i in range(3))  # stay, though above the target
    assert all(states[f"new-c{i}"] == OPEN for i in range(7))
    [refusal] = result.refusals
    assert refusal.short == 1 and refusal.open_patients == tuple(f"open-a{i}" for i in range(9))
    assert "never moved" in refusal.reason and "refused" in format_report([], result)


def test_released_patients_in_a_population(pop: list[PatientRecord]) -> None:
    """A population 60 % of which was released before (and 5 % sequestered): the released
    stay open, the sequestered stay, the rest fill each large cell up to its target."""
    r = random.Random(11)
    earlier = [OPEN if x < 0.6 else SEQUESTERED if x < 0.65 else None for x in (r.random() for _ in pop)]
    mixed = [dataclasses.replace(p, state=state) for p, state in zip(pop, earlier, strict=True)]
    result = sequester(mixed, SequesterConfig(), 1)
    states = result.states()
    for p in mixed:
        if p.state is not None:
            assert states[p.patient_id] == p.state and p.patient_id not in result.decisions
    refused = {(f.site, f.modality, f.stratum): f for f in result.refusals}
    for (modality, site, stratum), members in _cells(mixed).items():
        if len(members) < 5:
            continue
        target = (2 * len(members) + 5) // 10
        already = sum(p.state == SEQUESTERED for p in members)
        free = sum(p.state is None for p in members)
        final = sum(states[p.patient_id] == SEQUESTERED for p in members)
        assert final == max(already, min(target, already + free))
        if target > already + free:
            assert refused[site, modality, stratum].short == target - already - free
        else:
            assert (site, modality, stratum) not in refused
    assert result.refusals  # with 60 % released, some cells are short


def test_a_second_run_changes_nothing(pop: list[PatientRecord]) -> None:
    first = sequester(pop, SequesterConfig(), 1).states()
    assigned = [dataclasses.replace(p, state=first[p.patient_id]) for p in pop]
    again = sequester(assigned, SequesterConfig(), 2)
    assert not again.decisions and not again.refusals and again.states() == first


def test_quarantined_patients_are_left_out() -> None:
    held = _same("q", 3, state=QUARANTINED, modalities=frozenset({"MG"}))
    cell = _same("n", 5)
    result = sequester(held + cell, SequesterConfig(), 1)
    assert result.skipped == ("q0", "q1", "q2")
    assert not {"q0", "q1", "q2"} & (set(result.decisions) | set(result.kept) | set(result.states()))
    assert result.modality_order == ("CT",)  # MG: only quarantined patients have it
    [c] = result.cells
    assert c.size == 5 and c.sequestered == 1  # 5, not 8: the quarantined do not count
    assert assign_new(held[0], cell, SequesterConfig(), 1) == (QUARANTINED, "unchanged: already quarantined")
    assert assign_new(dataclasses.replace(cell[0], state=OPEN), cell, SequesterConfig(), 1)[0] == OPEN


# -- new patients ----------------------------------------------------------------------------------

def test_new_patients_keep_the_running_balance(pop: list[PatientRecord]) -> None:
    """1,000 patients arriving one by one after a run over 4,000. Each arrival into a cell of 5
    or more: |s - 0.2 n| stays below 1 once it is, and shrinks until it is; small cells draw."""
    cfg, seed = SequesterConfig(), 1
    first = sequester(pop, cfg, seed)
    current = [dataclasses.replace(p, state=first.states()[p.patient_id]) for p in pop]
    split = {(c.modality, c.site, c.stratum) for c in first.cells if c.method == "stratum split"}
    arrivals = population(1000, seed=99, prefix="N")
    order = list(first.modality_order)
    counts: dict[tuple[str, str, tuple[str, ...]], list[int]] = defaultdict(lambda: [0, 0])  # n, s
    for key, members in _cells(current).items():
        counts[key] = [len(members), sum(p.state == SEQUESTERED for p in members)]
    reasons: Counter[tuple[str, str]] = Counter()
    per_modality = Counter(m for p in current for m in p.modalities)
    for i, p in enumerate(arrivals):
        state, reason = assign_new(p, current, cfg, seed)
        if i % 50 == 0:
            assert assign_new(p, current, cfg, seed) == (state, reason)  # a retried ingest: the same
        current.append(dataclasses.replace(p, state=state))
        per_modality.update(p.modalities)
        # The modality order holds (so the cells counted here stay those of the module).
        assert sorted(per_modality, key=lambda m: (-per_modality[m], m)) == order
        key = _key(p, order)
        n, s = counts[key]
        after = s + (state == SEQUESTERED)
        if n + 1 >= 5:
            assert reason.startswith("running balance"), reason
            assert abs(after - 0.2 * (n + 1)) < max(abs(s - 0.2 * n), 1) + 1e-9
        else:
            assert reason.startswith("small-stratum draw"), reason
        counts[key] = [n + 1, after]
        reasons[reason.split(":")[0], state] += 1
    for key in split:  # cells split by the run are still within one patient of the fraction
        n, s = counts[key]
        assert abs(s - 0.2 * n) < 1, key
    new = sum(count for (_, state), count in reasons.items() if state == SEQUESTERED)
    assert 0.17 < new / 1000 < 0.26, reasons
    total = sum(p.state == SEQUESTERED for p in current) / len(current)
    assert abs(total - 0.2) < 0.025, total
    for attribute, distance in _distances(current, {}).items():
        assert distance < 0.08, (attribute, distance)


def test_one_stratum_stream_ends_exactly_at_the_fraction() -> None:
    for fraction in (0.2, 0.3):
        cfg, current = SequesterConfig(fraction=fraction), []
        for p in _same("s", 1000):
            state, _ = assign_new(p, current, cfg, 5, modalities_by_frequency=("CT",))
            current.append(dataclasses.replace(p, state=state))
            n, s = len(current), sum(q.state == SEQUESTERED for q in current)
            if n >= 40:  # after the first small-cell draws have been caught up
                assert abs(s - fraction * n) < 1, (fraction, n, s)
        assert sum(q.state == SEQUESTERED for q in current) == round(fraction * 1000)


# -- the report ------------------------------------------------------------------------------------

def test_balance_report_and_its_text(pop: list[PatientRecord]) -> None:
    result = sequester(pop, SequesterConfig(), 1)
    report = balance_report(pop, result.states())
    assert [b.attribute for b in report] == list(ATTRIBUTES)
    by = {b.attribute: b for b in report}
    assert sum(by["site"].open_counts) + sum(by["site"].sequestered_counts) == N
    assert by["age_band"].categories[0] == "0-17" and by["age_band"].categories[-1] == "unknown"
    assert sum(by["modality"].open_counts) + sum(by["modality"].sequestered_counts) == \
        sum(len(p.modalities) for p in pop)  # a patient counts once per modality
    for b in report:
        assert b.js_distance == pytest.approx(js_distance(b.open_counts, b.sequestered_counts))
    text = format_report(report, result)
    assert "rule: sequester v1 seed=1 fraction=0.2" in text
    assert f"race: Jensen-Shannon distance {by['race'].js_distance:.4f}" in text
    assert "Black or African American" in text and "85+" in text
    everyone_open = balance_report(pop, {p.patient_id: OPEN for p in pop})
    assert all(math.isnan(b.js_distance) for b in everyone_open)
    assert "undefined" in format_report(everyone_open)


def test_assignment_never_moves_another_issuers_patient_of_the_same_id() -> None:
    """The same PatientID under two issuers is two patients: placing the new, pending one must
    not carry the state over to the other, already sequestered (its images would go public)."""
    import sqlalchemy
    from sqlalchemy import insert, select

    from archive.config import ReleaseConfig
    from archive.index.schema import metadata, patients
    from archive.release.assign import assign_pending_on_ingest

    engine = sqlalchemy.create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(patients), [
            {"patient_id": "123", "issuer_of_patient_id": "A", "release_state": SEQUESTERED},
            {"patient_id": "123", "issuer_of_patient_id": "B", "release_state": "pending"}])
        cfg = ReleaseConfig(assign_on_ingest=True, fraction=0.01)  # the new one goes open
        assert assign_pending_on_ingest(conn, cfg, ["123"]) == 1
        states = dict(conn.execute(select(patients.c.issuer_of_patient_id, patients.c.release_state)).all())
    assert states == {"A": SEQUESTERED, "B": OPEN}
