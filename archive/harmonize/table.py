"""The mapping table and the vocabulary: reading MIDRC's files, the shipped data, operators'
overrides, and exact lookups.

The shipped files in ``data/`` are derived from MIDRC's reference by ``build_data`` (run
``python -m archive.harmonize build REFERENCE_DIR``): the vocabulary is MIDRC's
filtering_attributes.csv plus the codes the mapping table uses that it lacks (their attributes read
from the Long Common Name), and the mapping has one code per (Modality, description).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from archive.harmonize.descriptor import (
    PRECEDENCE,
    contrast_of,
    describe,
    primary,
    study_families,
    words,
)
from archive.harmonize.model import Procedure
from archive.harmonize.normalize import modalities as parse_modalities
from archive.harmonize.normalize import normalize_description

DATA = Path(__file__).parent / "data"
MAPPING_FILE = DATA / "midrc_mapping_v1.tsv"
VOCABULARY_FILE = DATA / "vocabulary_v1.csv"
MAPPING_COLUMNS = ("Modality", "StudyDescription", "LOINC code", "L-Long Common Name")
VOCABULARY_COLUMNS = ("LOINC code", "L-Long Common Name", "L-Method", "L-System", "Rad.Timing",
                      "MIDRC-System")
_TIMING = {"W": "W", "WO": "WO", "WWO": "WO & W", "": ""}
# Name prefixes of the Radiology Playbook and the method families they belong to.
_PREFIXES = (("Portable XR", "XR.portable", ("XR",)), ("XR", "XR", ("XR",)), ("CTA", "CT.angio", ("CT",)),
             ("CT", "CT", ("CT",)), ("MRA", "MR.angio", ("MR",)), ("MR", "MR", ("MR",)),
             ("PET+CT", "PT+CT", ("PT", "CT")), ("PT", "PT", ("PT",)), ("SPECT", "NM.SPECT", ("NM",)),
             ("NM", "NM", ("NM",)), ("US", "US", ("US",)), ("DBT", "MG.tomo", ("MG",)),
             ("MG", "MG", ("MG",)), ("RF", "RF", ("RF",)))
_REGION_NAMES = {"CHEST": "Chest", "ABDOMEN": "Abdomen", "PELVIS": "Pelvis", "HEAD": "Head",
                 "NECK": "Neck", "HEART": "Chest>Heart", "CSPINE": "Neck>Spine.cervical",
                 "TSPINE": "Chest>Spine.thoracic", "LSPINE": "Abdomen>Spine.lumbar",
                 "UNSPEC": "Unspecified", "WHOLEBODY": "Whole body", "FACE": "Head>Face"}
_REGION_ORDER = ("WHOLEBODY", "HEAD", "FACE", "NECK", "CSPINE", "CHEST", "HEART", "RIBS", "TSPINE",
                 "ABDOMEN", "LSPINE", "PELVIS", "SACRUM", "HIP")


@dataclass(frozen=True)
class MappingRow:
    """One row of a mapping table (MIDRC's, the shipped one, or an override file)."""

    modalities: tuple[str, ...]  # () for "[blank]": any modality
    description: str  # as written
    code: str
    name: str


def clean(value: str | None) -> str:
    """A field without stray white space (the reference has tabs and newlines inside fields)."""
    return " ".join((value or "").split())


def read_rows(stream: IO[str], columns: Sequence[str], delimiter: str) -> list[dict[str, str]]:
    """CSV/TSV rows as dicts; tolerates a BOM, CRLF and extra columns, names missing ones."""
    text = stream.read().lstrip("\ufeff")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [clean(h) for h in reader.fieldnames or []]
    missing = [c for c in columns if c not in header]
    if missing:
        found = ", ".join(header) or "(none)"
        raise ValueError(f"missing column(s) {', '.join(missing)}; the header has: {found}")
    reader.fieldnames = header
    return [{k: v or "" for k, v in row.items() if k is not None} for row in reader]


def read_mapping(stream: IO[str]) -> list[MappingRow]:
    """Rows of a TSV with MIDRC's columns: Modality, StudyDescription, LOINC code, L-Long Common Name."""
    rows = read_rows(stream, MAPPING_COLUMNS, "\t")
    return [MappingRow(parse_modalities(r["Modality"]), r["StudyDescription"].strip(),
                       clean(r["LOINC code"]), clean(r["L-Long Common Name"]))
            for r in rows if clean(r["LOINC code"])]


def read_mapping_file(path: Path) -> list[MappingRow]:
    with path.open(encoding="utf-8", newline="") as f:
        return read_mapping(f)


def read_vocabulary(stream: IO[str]) -> dict[str, Procedure]:
    """Procedures by code from a CSV with MIDRC's filtering_attributes columns."""
    out: dict[str, Procedure] = {}
    for r in read_rows(stream, VOCABULARY_COLUMNS, ","):
        code = clean(r["LOINC code"])
        if code:
            system = clean(r["L-System"])
            out[code] = Procedure(code, clean(r["L-Long Common Name"]), clean(r["L-Method"]), system,
                                  clean(r["Rad.Timing"]), clean(r["MIDRC-System"]) or system)
    return out


def read_vocabulary_file(path: Path) -> dict[str, Procedure]:
    with path.open(encoding="utf-8", newline="") as f:
        return read_vocabulary(f)


def families_of(procedure: Procedure) -> tuple[str, ...]:
    """The method families of a code, from its Long Common Name."""
    return next((fams for prefix, _, fams in _PREFIXES if procedure.name.startswith(prefix + " ")), ())


def derive_procedure(code: str, name: str) -> Procedure:
    """A procedure known only by code and name: method, system and timing read from the name."""
    method, fams = next(((m, f) for p, m, f in _PREFIXES if name.startswith(p + " ")), ("", ()))
    d = describe(name, primary(fams))
    regions = sorted(d.regions, key=lambda r: (_REGION_ORDER.index(r) if r in _REGION_ORDER else 99, r))
    system = "+".join(_REGION_NAMES.get(r, r.title()) for r in regions) or "Unspecified"
    return Procedure(code, name, method, system, _TIMING[contrast_of(words(name))], system)


def resolve(rows: Iterable[MappingRow]) -> list[MappingRow]:
    """One code per (modality, normalized description): the majority, the later row on a tie.

    MIDRC's table repeats some pairs, a few with different codes; every modality of a
    "CR, DX" row becomes its own row."""
    votes: dict[tuple[str, str], Counter[str]] = {}
    last: dict[tuple[str, str], dict[str, int]] = {}
    first: dict[tuple[str, str], MappingRow] = {}
    names: dict[str, str] = {}
    for i, row in enumerate(rows):
        names.setdefault(row.code, row.name)
        for m in row.modalities or ("",):
            key = (m, normalize_description(row.description))
            votes.setdefault(key, Counter())[row.code] += 1
            last.setdefault(key, {})[row.code] = i
            first.setdefault(key, row)
    out = []
    for key, counter in votes.items():
        code = max(counter, key=lambda c: (counter[c], last[key][c]))
        out.append(MappingRow((key[0],) if key[0] else (), first[key].description, code, names[code]))
    return out


@dataclass(frozen=True)
class Entry:
    procedure: Procedure
    how: str  # "exact" (shipped table) or "override"
    modality: str  # the modality the row was written for, "" for any


class Table:
    """Exact lookups by (Modality, normalized description); overrides replace shipped rows."""

    def __init__(self, vocabulary: dict[str, Procedure]) -> None:
        self.vocabulary = vocabulary
        # normalized description -> modality ("" = any) -> entry
        self._index: dict[str, dict[str, Entry]] = {}

    def add(self, rows: Iterable[MappingRow], how: str) -> None:
        for row in rows:
            procedure = self.procedure(row.code, row.name)
            by_modality = self._index.setdefault(normalize_description(row.description), {})
            for m in row.modalities or ("",):
                by_modality[m] = Entry(procedure, how, m)

    def procedure(self, code: str, name: str) -> Procedure:
        """The vocabulary's procedure for ``code``; a new code is read from its name."""
        if code in self.vocabulary:
            return self.vocabulary[code]
        if not name:
            raise ValueError(f"code {code} is not in the vocabulary and the row gives no L-Long Common Name")
        self.vocabulary[code] = derive_procedure(code, name)
        return self.vocabulary[code]

    def descriptions(self) -> set[str]:
        return set(self._index)

    def rows(self) -> list[MappingRow]:
        """The table as it stands (overrides in place of the rows they replace), one row per
        description and code, with the modalities it is written for."""
        grouped: dict[tuple[str, str], list[str]] = {}
        for description, by_modality in self._index.items():
            for modality, entry in by_modality.items():
                grouped.setdefault((description, entry.procedure.code), []).append(modality)
        return [MappingRow(tuple(m for m in mods if m), d, code, self.vocabulary[code].name)
                for (d, code), mods in grouped.items()]

    def lookup(self, study: Sequence[str], description: str) -> Entry | None:
        """The entry for a normalized description: the study's own modalities first (the one
        that names the procedure wins), then rows of the same family (a DR study finds the DX
        row), then rows written for any modality; never a code of another family (MIDRC's
        "CT,PT" rows give "PT Lung" to the PT of a PET/CT, not to a CT-only study)."""
        by_modality = self._index.get(description)
        if not by_modality:
            return None
        fams = study_families(study)
        hits = [by_modality[m] for m in study if m in by_modality and _fits(by_modality[m], fams, fams)]
        if not hits:
            hits = [e for m, e in by_modality.items() if m and _fits(e, fams, study_families([m]))]
            if not hits and "" in by_modality and _fits(by_modality[""], fams, fams):
                hits = [by_modality[""]]
        return _first_by_precedence(hits)


def _fits(entry: Entry, study: frozenset[str], written_for: frozenset[str]) -> bool:
    """A row written for another modality (or for any) serves a study of the same family only,
    and only with a code of that family: a CR study never finds a CT code or a non-imaging one."""
    if not study:
        return True
    return bool(study & written_for) and bool(study & frozenset(families_of(entry.procedure)))


def _first_by_precedence(hits: list[Entry]) -> Entry | None:
    """One entry among a study's modalities: an override first, then the modality that names the
    procedure (the PT row of a PET/CT study)."""
    if not hits:
        return None
    pool = [e for e in hits if e.how == "override"] or hits
    return min(pool, key=lambda e: PRECEDENCE.index(primary(study_families([e.modality])) or "XR"))


def build_data(reference: Path, out: Path = DATA) -> None:
    """Write the shipped vocabulary and mapping from MIDRC's reference folder."""
    with (reference / "filtering_attributes.csv").open(encoding="utf-8", newline="") as f:
        vocabulary = read_vocabulary(f)
    source = {code: "filtering_attributes.csv" for code in vocabulary}
    rows = read_mapping_file(reference / "mapping_table_train.tsv")
    for row in rows:
        if row.code not in vocabulary:
            vocabulary[row.code] = derive_procedure(row.code, row.name)
            source[row.code] = "mapping_table_train.tsv (attributes read from the name)"
    _write_vocabulary(out / VOCABULARY_FILE.name, vocabulary, source)
    _write_mapping(out / MAPPING_FILE.name, resolve(rows), vocabulary)


def _write_vocabulary(path: Path, vocabulary: dict[str, Procedure], source: dict[str, str]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([*VOCABULARY_COLUMNS, "source"])
        for p in vocabulary.values():
            w.writerow([p.code, p.name, p.method, p.system, p.timing, p.region, source[p.code]])


def _write_mapping(path: Path, rows: list[MappingRow], vocabulary: dict[str, Procedure]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(MAPPING_COLUMNS)
        for r in rows:
            w.writerow([", ".join(r.modalities) or "[blank]", r.description or "(blank)", r.code,
                        vocabulary[r.code].name])

