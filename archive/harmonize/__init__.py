"""Harmonization of study descriptions: each study's (Modality, StudyDescription) placed on one
LOINC / RSNA Radiology Playbook procedure, as MIDRC does, with the code's method, body region and
contrast timing for cohort filters.

Exact lookups in MIDRC's table (after MIDRC's normalization) and the operator's overrides come
first; descriptions never seen are placed by ``matcher`` with a confidence, or left unmapped with
the reason. See docs/harmonization.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from archive.harmonize.matcher import THRESHOLD, Matcher, Query
from archive.harmonize.model import Placement, Procedure
from archive.harmonize.normalize import modalities as parse_modalities
from archive.harmonize.normalize import normalize_description
from archive.harmonize.table import (
    MAPPING_FILE,
    VOCABULARY_FILE,
    MappingRow,
    Table,
    read_mapping_file,
    read_vocabulary_file,
)

# Version of the shipped mapping and vocabulary (data/*_v1.*): MIDRC's table as published in
# MIDRC/midrc_dicom_harmonization, training part, see data/README.md.
MAPPING_VERSION = "midrc-v1"

__all__ = ["MAPPING_VERSION", "Harmonizer", "Placement", "Procedure", "THRESHOLD"]


class Harmonizer:
    """Places studies on LOINC procedures: overrides, then the table, then the matcher."""

    def __init__(self, vocabulary: dict[str, Procedure], rows: Iterable[MappingRow],
                 overrides: Iterable[MappingRow] = (), threshold: float = THRESHOLD) -> None:
        self.table = Table(dict(vocabulary))
        self.table.add(rows, "exact")
        self.table.add(overrides, "override")
        # The matcher learns from the table as it stands: overrides in place of shipped rows.
        self.matcher = Matcher(self.table.vocabulary.values(), self.table.rows(), threshold)
        self._place = lru_cache(maxsize=200_000)(self._place_normalized)

    @classmethod
    def load(cls, override_path: Path | None = None, threshold: float = THRESHOLD) -> Harmonizer:
        """The shipped mapping and vocabulary, plus the operator's override file (a TSV with
        MIDRC's columns: Modality, StudyDescription, LOINC code, L-Long Common Name)."""
        overrides = read_mapping_file(override_path) if override_path else []
        return cls(read_vocabulary_file(VOCABULARY_FILE), read_mapping_file(MAPPING_FILE), overrides,
                   threshold)

    def place(self, modality: str | Sequence[str], description: str, body_part: str = "",
              n_images: int | None = None) -> Placement:
        """The procedure of a study: ``modality`` is one value or the study's list of modalities."""
        return self._place(parse_modalities(modality), normalize_description(description),
                           (body_part or "").strip().upper(), n_images)

    def _place_normalized(self, mods: tuple[str, ...], description: str, body_part: str,
                          n_images: int | None) -> Placement:
        entry = self.table.lookup(mods, description)
        if entry is not None:
            source = "override file" if entry.how == "override" else f"MIDRC table ({MAPPING_VERSION})"
            return Placement(entry.procedure, 1.0, f"{source}, row for {entry.modality or 'any modality'}",
                             entry.how)
        return self.matcher.match(Query(mods, description, body_part, n_images))
