"""The two values the harmonizer hands out: a LOINC procedure and a study's placement on one."""

from __future__ import annotations

from dataclasses import dataclass

HOWS = ("exact", "override", "matched", "unmapped")


@dataclass(frozen=True)
class Procedure:
    """One LOINC / RSNA Radiology Playbook procedure with the attributes cohort filters use."""

    code: str  # LOINC code, e.g. "36589-0"
    name: str  # LOINC Long Common Name, e.g. "Portable XR Chest AP single view"
    method: str  # L-Method: XR, XR.portable, CT, CT.angio, MR, PT+CT, NM, US, MG, RF, ...
    system: str  # L-System, the body region: "Chest", "Abdomen+Pelvis", "Unspecified", ...
    timing: str  # Rad.Timing, the contrast timing: "W", "WO", "WO & W" or ""
    region: str  # MIDRC-System, MIDRC's body-region grouping for cohorts


@dataclass(frozen=True)
class Placement:
    """Where a study's (Modality, StudyDescription) landed, how sure, and why.

    ``procedure`` is None exactly when ``how`` is "unmapped"; ``reason`` then says what was
    missing or ambiguous so a curator can add an override."""

    procedure: Procedure | None
    confidence: float  # 0..1; exact and override lookups are 1.0
    reason: str
    how: str  # "exact" | "override" | "matched" | "unmapped"

    @property
    def code(self) -> str:
        return self.procedure.code if self.procedure else ""

    @property
    def name(self) -> str:
        return self.procedure.name if self.procedure else ""

    @property
    def mapped(self) -> bool:
        return self.procedure is not None
