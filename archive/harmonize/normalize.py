"""MIDRC's normalization of study descriptions, and the reading of a study's Modality values."""

from __future__ import annotations

import re
from collections.abc import Sequence

# MIDRC writes an empty description as "(blank)" in its tables; "[blank]" appears too.
_BLANK = frozenset({"(BLANK)", "[BLANK]"})
_SPACE = re.compile(r"\s+")
_MODALITY_SPLIT = re.compile(r"[,\\/;|\s]+")


def normalize_description(text: str | None) -> str:
    """Trim, collapse white space and upper-case, as MIDRC does before a table lookup."""
    s = _SPACE.sub(" ", (text or "").strip()).upper()
    return "" if s in _BLANK else s


def modalities(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """A study's Modality values as upper-case codes, in order, without duplicates.

    Accepts one value ("CT"), a DICOM multi-value ("CT\\PT"), MIDRC's lists ("CR, DX"), the
    textual list some exports write ("['PT','NM']"), or a sequence of any of these.
    """
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        for part in _MODALITY_SPLIT.split(re.sub(r"[\[\]'\"]", " ", str(item)).upper()):
            if part and part not in ("BLANK", "(BLANK)") and part not in out:
                out.append(part)
    return tuple(out)
