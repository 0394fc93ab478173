"""Which instances may carry identifying text in their pixels, and so go to quarantine.

The Basic Profile does not touch pixel data (PS3.15 E.1.1: only the Clean Pixel Data Option does, which
this archive does not claim), so an instance whose pixels may show a name or a date is not released: it
is flagged, with a reason that quotes no value of the instance, and the ingest pipeline routes it.

Flagged, in this order:

1. Burned In Annotation (0028,0301) is YES (PS3.3 C.7.6.1.1.8), or Recognizable Visual Features
   (0028,0302) is YES (a face, PS3.3 C.7.6.1.1.9).
2. SOP Classes that are pictures of screens or documents whatever they declare: the Secondary Capture
   family (PS3.4 B.5) and encapsulated PDF or CDA documents (their text cannot be cleaned here).
3. An Image Type (0008,0008) value that names a screen capture or a report page (SCREEN SAVE, DOSE
   REPORT, CSA REPORT ...): dose pages of CT scanners carry the patient's name whatever the flag says.
4. With Burned In Annotation absent (an explicit NO is trusted from here on): ultrasound, endoscopy and
   visible-light photography (burned-in text or faces are the rule there), modalities OT, SC, DOC and XC,
   and series or image descriptions that name a screen capture or a dose report.
"""

from __future__ import annotations

import re

from pydicom.dataset import Dataset

_ALWAYS = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",
    "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA Storage",
}
_UNLESS_DECLARED_CLEAN = {
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic Image Storage",
}
_SCREEN_MODALITIES = frozenset({"OT", "SC", "DOC", "XC"})
_SCREEN_IMAGE_TYPES = frozenset({
    "SCREEN SAVE", "SCREENSAVE", "SCREEN SHOT", "SCREENSHOT", "SCREEN CAPTURE", "DOSE REPORT", "DOSE INFO",
    "CSA REPORT",
})
_SCREEN_TEXT = re.compile(r"dose\s*(?:report|info)|screen\s*(?:save|shot|capture)|patient\s*protocol"
                          r"|exam\s*summary", re.I)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip().upper()


def assess(ds: Dataset) -> tuple[bool, str]:
    """(quarantine, reason) for an instance, before de-identification (it reads the original values)."""
    burned_in = _text(ds, "BurnedInAnnotation")
    if burned_in == "YES":
        return True, "Burned In Annotation (0028,0301) is YES"
    if _text(ds, "RecognizableVisualFeatures") == "YES":
        return True, "Recognizable Visual Features (0028,0302) is YES"
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if sop_class in _ALWAYS:
        return True, f"{_ALWAYS[sop_class]}: screen or document pictures usually carry identifying text"
    if "Rows" not in ds and "PixelData" not in ds:
        return False, ""  # no pixels, nothing burned in
    image_type = {str(v).strip().upper() for v in (ds.get("ImageType") or [])}
    if image_type & _SCREEN_IMAGE_TYPES:
        return True, "Image Type names a screen capture or report page"
    if burned_in:
        return False, ""  # declared NO: trusted for what follows
    if sop_class in _UNLESS_DECLARED_CLEAN:
        return True, (f"{_UNLESS_DECLARED_CLEAN[sop_class]} without Burned In Annotation: "
                      "burned-in text is the rule for it")
    modality = _text(ds, "Modality")
    if modality in _SCREEN_MODALITIES:
        return True, f"Modality {modality} without Burned In Annotation: likely a screen capture"
    for keyword in ("SeriesDescription", "ImageComments", "DerivationDescription"):
        if _SCREEN_TEXT.search(str(ds.get(keyword, "") or "")):
            return True, f"{keyword} names a screen capture or dose report, Burned In Annotation absent"
    return False, ""
