"""Command line: ``python -m archive.harmonize preview|place|build``.

    preview [IN.tsv [OUT.tsv]] [--overrides FILE]   placements of a TSV (stdin/stdout by default)
    place MODALITY DESCRIPTION [--overrides FILE]    one placement
    build REFERENCE_DIR [OUT_DIR]                    re-derive data/ from MIDRC's reference
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from archive.harmonize import Harmonizer
from archive.harmonize.preview import preview
from archive.harmonize.table import DATA, build_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m archive.harmonize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preview", help="place every row of a TSV (Modality, StudyDescription)")
    p.add_argument("input", nargs="?", type=Path)
    p.add_argument("output", nargs="?", type=Path)
    p.add_argument("--overrides", type=Path)
    q = sub.add_parser("place", help="place one description")
    q.add_argument("modality")
    q.add_argument("description")
    q.add_argument("--overrides", type=Path)
    b = sub.add_parser("build", help="derive the shipped data from MIDRC's reference folder")
    b.add_argument("reference", type=Path)
    b.add_argument("out", nargs="?", type=Path, default=DATA)
    args = parser.parse_args(argv)
    if args.command == "build":
        build_data(args.reference, args.out)
        return 0
    harmonizer = Harmonizer.load(args.overrides)
    if args.command == "place":
        placed = harmonizer.place(args.modality, args.description)
        print(f"{placed.code}\t{placed.name}\t{placed.confidence:.2f}\t{placed.how}\t{placed.reason}")
        return 0
    return _preview(args.input, args.output, harmonizer)


def _preview(source: Path | None, target: Path | None, harmonizer: Harmonizer) -> int:
    try:
        fin = source.open(encoding="utf-8-sig", newline="") if source else sys.stdin
        fout = target.open("w", encoding="utf-8", newline="") if target else sys.stdout
        with fin, fout:
            preview(fin, fout, harmonizer)
    except ValueError as e:
        print(f"preview: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
