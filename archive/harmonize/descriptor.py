"""What a procedure name says, as comparable features: method family, body regions, side,
contrast, angiography, portable, views and projections, purpose.

The same reader serves study descriptions and LOINC Long Common Names, so a description and a
code can be compared feature by feature (see ``matcher``).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import takewhile

from archive.harmonize import lexicon as lx

# Which family a study's Modality value belongs to; non-image modalities (SR, PR, KO, SEG, OT, ...)
# say nothing about the procedure and are left out.
MODALITY_FAMILY: dict[str, tuple[str, ...]] = {
    "CR": ("XR",), "DX": ("XR",), "DR": ("XR",), "RG": ("XR",), "PX": ("XR",), "DXR": ("XR",),
    "CT": ("CT",), "MR": ("MR",), "PT": ("PT",), "CTPT": ("CT", "PT"), "NM": ("NM",), "ST": ("NM",),
    "US": ("US",), "IVUS": ("US",), "MG": ("MG",), "RF": ("RF",), "XA": ("RF",),
}
# When a study holds several families, the one that names the procedure: a PET/CT is a PET.
PRECEDENCE = ("PT", "NM", "MG", "MR", "CT", "US", "RF", "XR")
# Families that may share one study without contradicting each other (hybrid imaging).
HYBRID = frozenset({"PT", "NM", "CT"})
# Families where contrast timing is part of the code; elsewhere it is ignored.
CONTRAST_FAMILIES = frozenset({"CT", "MR", ""})
VIEW_FAMILIES = frozenset({"XR", "MG", "RF", ""})

_PLACEHOLDERS = frozenset({"", "NONE", "NULL", "BLANK", "NA", "N/A", "0", "-", "UNKNOWN", "."})
# Words that name a feature (modality words alone do not: "XR" says nothing of the body).
_FEATURE_WORDS = frozenset(w for table in (lx.REGION_WORDS, lx.PURPOSE_WORDS, lx.PROJECTION_WORDS,
                                           lx.VIEW_WORDS, lx.SIDE_WORDS) for w in table) \
    | lx.ANGIO_WORDS | lx.PORTABLE_WORDS | lx.OUTSIDE_WORDS


@dataclass(frozen=True)
class Descriptor:
    """Features of one procedure name, read in the context of a method family."""

    family: str  # the family it was read in: XR, CT, MR, PT, NM, US, MG, RF or "" (unknown)
    named: tuple[str, ...]  # families the text names, in order ("PET CT ..." names PT, CT)
    regions: frozenset[str]
    side: str = ""  # LEFT, RIGHT, BILATERAL or ""
    contrast: str = ""  # W, WO, WWO or ""
    angio: bool = False
    portable: bool = False
    views: str = ""  # "" (not said), N (some views), 1, 2, 3, 4, 1-2, 2-3, 2+, 3+, 4+
    projections: frozenset[str] = frozenset()
    purposes: frozenset[str] = frozenset()
    unknown: tuple[str, ...] = ()
    empty: bool = False  # nothing but placeholders or modality words

    def key(self) -> tuple[object, ...]:
        """What two descriptions must share to be the same procedure (unknown words aside)."""
        return (self.family, self.regions, self.side, self.contrast, self.angio, self.portable,
                self.views or "N", self.projections, self.purposes)

    def summary(self) -> str:
        """A short human-readable form for reasons and reports."""
        parts = [self.family or "?", "+".join(sorted(self.regions)) or "no region"]
        parts += [p for p in (self.side, self.contrast) if p]
        parts += ["angio"] * self.angio + ["portable"] * self.portable
        parts += [f"views={self.views}"] if self.views else []
        parts += sorted(self.projections) + sorted(self.purposes)
        return " ".join(parts).lower()


def words(text: str) -> tuple[str, ...]:
    """Upper-case, apply the phrase rewrites, split into words (digits and "+" kept)."""
    s = f" {text.upper()} "
    for pattern, replacement in lx.REWRITES:
        s = pattern.sub(replacement, s)
    return tuple(re.findall(r"[A-Z0-9]+\+?", s))


def study_families(modalities: Iterable[str]) -> frozenset[str]:
    """The method families of a study's Modality values (non-image modalities dropped)."""
    return frozenset(f for m in modalities for f in MODALITY_FAMILY.get(m.strip().upper(), ()))


def primary(families: Iterable[str]) -> str:
    """The family that names the procedure among several ("" when none)."""
    present = set(families)
    return next((f for f in PRECEDENCE if f in present), "")


def compatible(a: frozenset[str], b: frozenset[str]) -> bool:
    """May a study of families ``a`` hold a procedure named with families ``b``?"""
    return not a or not b or bool(a & b) or (a | b) <= HYBRID


def named_families(tokens: Iterable[str]) -> tuple[str, ...]:
    """The families a description names, in order: the first names the procedure ("CT CHEST W
    CONTRAST (PETCT)" is a CT). PET described as nuclear medicine ("NM PET") is PET."""
    named: list[str] = []
    for t in tokens:
        f = lx.MODALITY_WORDS.get(t)
        if f and f not in named:
            named.append(f)
    return tuple(f for f in named if f != "NM") if "PT" in named else tuple(named)


@lru_cache(maxsize=65536)
def describe(text: str, family: str | None = None, body_part: str = "",
             n_images: int | None = None) -> Descriptor:
    """Read ``text`` as a procedure of ``family`` (None: the family the text names).

    BodyPartExamined names the region a description leaves out; the number of images the number
    of views of a radiograph whose description does not say it."""
    tokens = tuple(_correct(t) for t in words(text))
    named = named_families(tokens)
    fam = family if family is not None else (named[0] if named else "")
    d = _read(tokens, fam, named)
    if body_part and not d.regions:
        d = replace(d, regions=body_part_regions(body_part), empty=False)
    if fam == "XR" and not d.views and n_images:
        d = replace(d, views=str(n_images) if n_images <= 2 else "3+")
    return _implied(d)


# BodyPartExamined defined terms (PS3.16 Annex L) that are several regions in one word.
_BODY_PARTS = {"CHESTABDOMEN": "CHEST ABDOMEN", "ABDOMENPELVIS": "ABDOMEN PELVIS",
               "CHESTABDPELVIS": "CHEST ABDOMEN PELVIS", "HEADNECK": "HEAD NECK", "TLSPINE": "TSPINE LSPINE",
               "CTSPINE": "CSPINE TSPINE", "LSSPINE": "LSPINE SACRUM", "WHOLESPINE": "CSPINE TSPINE LSPINE"}


@lru_cache(maxsize=1024)
def body_part_regions(body_part: str) -> frozenset[str]:
    """The regions of a BodyPartExamined value ("CHEST", "LSPINE", "ABDOMENPELVIS", ...)."""
    text = body_part.upper().replace(" ", "").replace("_", "")
    tokens = words(_BODY_PARTS.get(text, body_part))
    return frozenset(r for t in tokens for r in lx.REGION_WORDS.get(t, ()))


def _read(tokens: tuple[str, ...], fam: str, named: tuple[str, ...]) -> Descriptor:
    """The features the words name, before anything is implied."""
    # In a cross-sectional protocol name "AP" is abdomen and pelvis ("Abdomen^CT_AP_WITH"), not
    # an anteroposterior projection.
    ap_is_region = fam in ("CT", "MR", "PT") and "AP" in tokens
    words_ = tuple(t for t in tokens if not (ap_is_region and t == "AP"))
    regions = {r for t in words_ for r in lx.REGION_WORDS.get(t, ())}
    if ap_is_region:
        regions |= {"ABDOMEN", "PELVIS"}
    purposes = {lx.PURPOSE_WORDS[t] for t in words_ if t in lx.PURPOSE_WORDS}
    if any(t in lx.OUTSIDE_WORDS for t in words_):
        purposes.add("OUTSIDE")
    unknown = tuple(t for t in words_ if t not in _FEATURE_WORDS and not _ignorable(t))
    meaningful = ap_is_region or any(t in _FEATURE_WORDS for t in words_)
    return Descriptor(
        family=fam, named=named, regions=frozenset(regions),
        side=_side([lx.SIDE_WORDS[t] for t in words_ if t in lx.SIDE_WORDS]),
        contrast=contrast_of(tokens), angio=any(t in lx.ANGIO_WORDS for t in words_),
        portable=any(t in lx.PORTABLE_WORDS for t in words_),
        views=_views([lx.VIEW_WORDS[t] for t in words_ if t in lx.VIEW_WORDS]),
        projections=frozenset(lx.PROJECTION_WORDS[t] for t in words_ if t in lx.PROJECTION_WORDS),
        purposes=frozenset(purposes), unknown=unknown, empty=not meaningful and not unknown,
    )


def _ignorable(t: str) -> bool:
    return (t in lx.NOISE_WORDS or t in lx.MODALITY_WORDS or t in lx.CONTRAST_WORDS
            or t in _PLACEHOLDERS or any(c.isdigit() for c in t) or len(t) == 1)


def _side(sides: list[str]) -> str:
    distinct = set(sides)
    if len(distinct) > 1:
        return "BILATERAL"
    return distinct.pop() if distinct else ""


def _views(views: list[str]) -> str:
    specific = [v for v in views if v != "N"]
    return specific[0] if specific else ("N" if views else "")


def contrast_of(tokens: tuple[str, ...]) -> str:
    """W, WO or WWO from the contrast words; "W" counts only when no body part or view follows."""
    if "WWO" in tokens:
        return "WWO"
    with_ = any(_is_with_contrast(tokens, i) for i, t in enumerate(tokens) if t == "W")
    without = "WO" in tokens
    if with_ and without:
        return "WWO"
    if without:
        return "WO"
    if with_ or "CONTRAST" in tokens or "IV" in tokens:
        return "W"
    return ""


def _is_with_contrast(tokens: tuple[str, ...], i: int) -> bool:
    rest = [t for t in tokens[i + 1:] if t not in lx.NOISE_WORDS or t == "IV"]
    return not rest or rest[0] not in lx.FOLLOWER_NOT_CONTRAST


@dataclass
class _Draft:
    """A descriptor's features while the implications below apply to them."""

    family: str
    empty: bool
    portable: bool
    regions: set[str]
    purposes: set[str]
    projections: set[str]
    angio: bool
    contrast: str
    side: str
    views: str


def _implied(d: Descriptor) -> Descriptor:
    """What the words imply without saying it, per family: domain facts, not table entries."""
    w = _Draft(d.family, d.empty, d.portable, set(d.regions), set(d.purposes), set(d.projections),
               d.angio, d.contrast, d.side, d.views)
    for rule in (_anatomy, _vascular, _protocols, _interventions, _family_conventions, _relevant):
        rule(w)
    return replace(d, regions=frozenset(w.regions), purposes=frozenset(w.purposes), angio=w.angio,
                   side=w.side, contrast=w.contrast, projections=frozenset(w.projections), views=w.views)


def _anatomy(w: _Draft) -> None:
    for organ, parent in lx.CONTAINED_IN.items():
        if organ in w.regions and (parent in w.regions or organ == "AORTA" and len(w.regions) > 1):
            w.regions.discard(organ)
    if "SPINE" in w.regions and w.regions & {"CSPINE", "TSPINE", "LSPINE"}:
        w.regions.discard("SPINE")
    if "OUTSIDE" in w.purposes:
        w.purposes.discard("OUTSIDE")
        if not w.regions:
            w.regions.add("UNSPEC")  # brought in from elsewhere, body region not said
    if w.empty and not w.regions:
        w.regions.add("UNSPEC")


def _vascular(w: _Draft) -> None:
    if "PE" in w.purposes:  # a pulmonary embolism study is a pulmonary CTA with contrast
        w.purposes.add("PULMART")
        w.contrast = w.contrast or "W"
    if "PULMART" in w.purposes:
        w.angio = True
        w.regions.add("CHEST")


def _protocols(w: _Draft) -> None:
    if "CALCIUM" in w.purposes:  # coronary calcium scoring is a non-contrast heart CT
        w.regions.add("HEART")
        w.contrast = w.contrast or "WO"
    if "STONE" in w.purposes:  # so is a stone protocol, kidneys to bladder
        w.contrast = w.contrast or "WO"
    if w.purposes & {"STONE", "UROGRAM"} and w.regions <= {"ABDOMEN"}:
        w.regions |= {"ABDOMEN", "PELVIS"}
    if "MRCP" in w.purposes and not w.regions:
        w.regions.add("ABDOMEN")
    # low-dose chest CT is lung cancer screening (not a nodule follow-up), and non-contrast
    if "LOWDOSE" in w.purposes and w.regions == {"CHEST"} and not w.purposes & {"PE", "TUMOR", "FOLLOWUP"}:
        w.purposes.add("SCREEN")
    if "SCREEN" in w.purposes and w.family == "CT" and w.regions == {"CHEST"}:
        w.contrast = w.contrast or "WO"


def _interventions(w: _Draft) -> None:
    if w.purposes & {"BIOPSY", "TUBE", "BRONCH"} and w.family in ("CT", "US", "RF"):
        w.purposes.add("GUIDANCE")
    if "BRONCH" in w.purposes:
        w.regions.add("CHEST")


def _family_conventions(w: _Draft) -> None:
    if w.family == "MG" or "TOMO" in w.purposes and w.family in ("MG", ""):
        w.regions.add("BREAST")
    if w.family == "PT":
        w.regions, w.side = _pet_extent(w.regions, w.purposes, w.empty), ""
    if "ESOPHAGUS" in w.regions and w.family == "RF":
        w.regions -= {"CHEST"}
    if w.family == "XR":
        if w.purposes & {"CHECK", "TUBE"} and not w.views:
            w.views = "1"  # a film checking a line or tube is a single frontal view
        w.projections, w.views = _xr_views(w.projections, w.views, w.portable)
    w.projections.discard("KUB")


def _relevant(w: _Draft) -> None:
    """Keep only what tells this family's codes apart."""
    hard = lx.HARD_PURPOSES.get(w.family)
    if hard is not None:
        w.purposes &= hard
    if w.family not in CONTRAST_FAMILIES:
        w.contrast = ""
    if w.family not in VIEW_FAMILIES:
        w.views, w.projections = "", set()


def _pet_extent(regions: set[str], purposes: set[str], empty: bool) -> set[str]:
    """A PET that names no region, or names only the cancer's site ("PET BREAST CANCER"), is the
    usual oncologic whole-body (skull base to thigh) PET."""
    if regions == {"UNSPEC"} or (empty and not regions):
        return regions
    if not regions or "TUMOR" in purposes:
        return {"WHOLEBODY"}
    return regions


def _xr_views(projections: set[str], views: str, portable: bool) -> tuple[set[str], str]:
    """Count and projections of a radiograph: "PA and lateral" is two views, "AP" alone one; a
    KUB is a supine AP abdomen unless the description counts its views."""
    if "KUB" in projections and not views and not projections & {"AP", "PA", "LAT"}:
        projections.add("AP")
    projections.discard("KUB")
    if {"AP", "PA"} <= projections:
        projections -= {"AP", "PA"}
        projections.add("FRONTAL")
    frontal = projections & {"AP", "PA", "FRONTAL"}
    beams = projections - lx.POSITIONS
    if not views and frontal and "LAT" in beams and len(beams) == 2:
        views = "2"
    elif not views and frontal and len(beams) == 1:
        views = "1"
    if portable and views == "1" and not beams:
        projections.add("AP")  # a portable radiograph is taken AP
    return projections, views


# Typos and truncations ("CONTRST", "ABDOMNAL", "PELVI", "HODGK"): a word of five letters or
# more unknown to the lexicon is read as the lexicon word within one edit (symmetric deletions),
# or else the lexicon word it begins, when all such words mean the same.
_LEXICON = sorted({w for table in (lx.REGION_WORDS, lx.PURPOSE_WORDS, lx.MODALITY_WORDS,
                                   lx.PROJECTION_WORDS) for w in table if len(w) >= 5 and w.isalpha()}
                  | {w for w in lx.ANGIO_WORDS | lx.PORTABLE_WORDS if len(w) >= 5})
_KNOWN = _FEATURE_WORDS | lx.NOISE_WORDS | lx.MODALITY_WORDS.keys() | lx.CONTRAST_WORDS


def _deletions(w: str) -> set[str]:
    return {w[:i] + w[i + 1:] for i in range(len(w))}


def _deletion_index(lexicon: list[str]) -> dict[str, set[str]]:
    index: dict[str, set[str]] = {}
    for w in lexicon:
        for v in _deletions(w) | {w}:
            index.setdefault(v, set()).add(w)
    return index


_BY_DELETION = _deletion_index(_LEXICON)


@lru_cache(maxsize=16384)
def _correct(t: str) -> str:
    """The lexicon word a misspelt or truncated word stands for, or the word itself."""
    if t in _KNOWN or len(t) < 5 or not t.isalpha():
        return t
    found = set(_BY_DELETION.get(t, ())) | {w for v in _deletions(t) for w in _BY_DELETION.get(v, ())}
    if not found:
        i = bisect.bisect_left(_LEXICON, t)
        found = set(takewhile(lambda w: w.startswith(t), _LEXICON[i:]))
    meanings = {_meaning(w) for w in found}
    return min(found) if len(meanings) == 1 else t


def _meaning(w: str) -> tuple[object, ...]:
    return (lx.REGION_WORDS.get(w), lx.PURPOSE_WORDS.get(w), lx.MODALITY_WORDS.get(w),
            lx.PROJECTION_WORDS.get(w), w in lx.ANGIO_WORDS, w in lx.PORTABLE_WORDS)


def clear_caches() -> None:
    """Forget every cached reading (for measuring speed from cold)."""
    for cached in (describe, body_part_regions, _correct):
        cached.cache_clear()
