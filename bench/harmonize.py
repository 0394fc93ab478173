"""Harmonization of study descriptions: speed and quality, measured on MIDRC's reference.

    python bench/harmonize.py [--reference DIR] [--draws 100000] [--folds 5] [--seed 1]

Speed: descriptions placed per second for ``--draws`` descriptions drawn

* from study_descriptions_gen3.tsv, weighted by frequency (real input: mostly exact lookups,
  repeated descriptions answered from the cache), with the shipped harmonizer;
* from the held-out fold 0 of the cross-validation (every description unseen: all matcher work),
  with a harmonizer built from the other folds;

each from a cold cache, plus the matcher alone on distinct descriptions (no cache hits).

Quality: k-fold cross-validation over mapping_table_train.tsv (folds by description, so held-out
descriptions are in no table the fold's harmonizer has), per modality family: precision (of the
placed, how many got MIDRC's code), coverage (how many were placed). Once with MIDRC's vocabulary
(filtering_attributes.csv) and the training folds' codes ("strict"), once with the shipped
vocabulary, which knows every code of the table by name. Then the frequency-weighted coverage of
study_descriptions_gen3.tsv, and how consistent MIDRC's own labels are (the precision ceiling).
Nothing is asserted: tests/test_harmonize.py does that.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from archive.harmonize import Harmonizer
from archive.harmonize.descriptor import clear_caches
from archive.harmonize.evaluate import (
    Observed,
    cross_validate,
    errors_midrc_also_makes,
    fold_of,
    oracle_precision,
    read_observed,
    self_consistency,
    unique_rows,
    weighted_coverage,
)
from archive.harmonize.table import VOCABULARY_FILE as SHIPPED_VOCABULARY
from archive.harmonize.table import MappingRow, read_mapping_file, read_vocabulary_file

REFERENCE = Path(__file__).resolve().parents[2] / "shared/reference/midrc-harmonization"


def rate(place: Callable[[str, str], object], items: Sequence[tuple[str, str]]) -> float:
    """Descriptions per second placing ``items`` one by one, from cold caches (the harmonizer's
    own is new with it; the reading of words is cached module-wide)."""
    clear_caches()
    start = time.perf_counter()
    for modality, description in items:
        place(modality, description)
    return len(items) / (time.perf_counter() - start)


def speed(reference: Path, rows: list[MappingRow], draws: int, folds: int,
          seed: int) -> list[tuple[str, float]]:
    rnd = random.Random(seed)
    observed = read_observed(reference / "study_descriptions_gen3.tsv")
    gen3 = [(o.modality, o.description) for o in
            rnd.choices(observed, weights=[o.frequency for o in observed], k=draws)]
    rows = unique_rows(rows)
    train = [r for r in rows if fold_of(r.description, folds) != 0]
    unseen = [(",".join(r.modalities), r.description) for r in rows if fold_of(r.description, folds) == 0]
    fold_harmonizer = Harmonizer(read_vocabulary_file(SHIPPED_VOCABULARY), train)
    distinct = sorted({(o.modality, o.description) for o in observed})
    fresh = Harmonizer(read_vocabulary_file(SHIPPED_VOCABULARY), train)
    return [
        (f"gen3, {draws:,} weighted draws", rate(Harmonizer.load().place, gen3)),
        (f"unseen fold 0 ({len(unseen)} descriptions), {draws:,} draws",
         rate(fold_harmonizer.place, [rnd.choice(unseen) for _ in range(draws)])),
        (f"no cache hit: {len(distinct):,} distinct gen3 descriptions once each",
         rate(Harmonizer.load().place, distinct)),
        (f"no cache hit, all matcher: the {len(unseen)} unseen descriptions once each",
         rate(fresh.place, unseen)),
    ]


def quality(reference: Path, rows: list[MappingRow], folds: int) -> None:
    strict = read_vocabulary_file(reference / "filtering_attributes.csv")
    shipped = read_vocabulary_file(SHIPPED_VOCABULARY)
    for name, vocabulary in (("strict: filtering_attributes.csv + training folds' codes", strict),
                             ("shipped vocabulary (every code of the table by name)", shipped)):
        report = cross_validate(rows, vocabulary, folds)
        print(f"\n{folds}-fold cross-validation, {name}\n")
        print(report.table())
        same = errors_midrc_also_makes(report, rows)
        print(f"\n{len(report.errors)} disagreements with MIDRC, of which {same} give a code MIDRC itself "
              "gives to another description read the same")
    print(f"\nMIDRC's labels: {self_consistency(rows):.1%} of rows carry the majority code of their "
          f"reading; an oracle placing whole readings at >= 90 % coverage reaches "
          f"{oracle_precision(rows, 0.90):.1%} precision")


def coverage(reference: Path) -> None:
    observed: list[Observed] = read_observed(reference / "study_descriptions_gen3.tsv")
    placed, exact = weighted_coverage(Harmonizer.load(), observed)
    print(f"\nstudy_descriptions_gen3.tsv ({sum(o.frequency for o in observed):,.0f} studies, "
          f"{len(observed):,} descriptions), frequency-weighted: {placed:.1%} placed "
          f"({exact:.1%} by exact lookup, {placed - exact:.1%} by the matcher); target >= 95 %")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--draws", type=int, default=100_000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rows = read_mapping_file(args.reference / "mapping_table_train.tsv")
    print("speed (descriptions/s; target >= 20,000)\n")
    for label, per_second in speed(args.reference, rows, args.draws, args.folds, args.seed):
        print(f"  {per_second:>12,.0f}  {label}")
    quality(args.reference, rows, args.folds)
    coverage(args.reference)


if __name__ == "__main__":
    main()
