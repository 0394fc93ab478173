"""Preview a site's descriptions before any study arrives: a TSV with ``Modality`` and
``StudyDescription`` in (other columns ignored), the placement of each row out. Needs no server."""

from __future__ import annotations

import csv
from typing import IO

from archive.harmonize import Harmonizer
from archive.harmonize.table import read_rows

INPUT_COLUMNS = ("Modality", "StudyDescription")
OUTPUT_COLUMNS = ("Modality", "StudyDescription", "LOINC code", "L-Long Common Name", "confidence", "reason")


def preview(in_stream: IO[str], out_stream: IO[str], harmonizer: Harmonizer) -> int:
    """Write one output row per input row (code and name empty when unmapped); return the count.

    Tolerates a byte-order mark, CRLF line ends and extra columns; a missing column is a
    ``ValueError`` naming it."""
    rows = read_rows(in_stream, INPUT_COLUMNS, "\t")
    writer = csv.writer(out_stream, delimiter="\t", lineterminator="\n")
    writer.writerow(OUTPUT_COLUMNS)
    for row in rows:
        modality, description = row["Modality"].strip(), row["StudyDescription"]
        p = harmonizer.place(modality, description)
        writer.writerow([modality, description, p.code, p.name, f"{p.confidence:.2f}", p.reason])
    return len(rows)
