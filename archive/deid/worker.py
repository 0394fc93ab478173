"""De-identification in the ingest pipeline's parse step (runs in a parse worker or thread)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from archive.deid import DeidConfig, DeidResult, deidentify_file
from archive.dicom.part10 import (
    CANNOT_UNDERSTAND,
    InvalidInstance,
    ParsedInstance,
    parse_and_encode,
    parse_instance,
)


@dataclass(frozen=True)
class Sent:
    """The UIDs as the sender sent them: checked against the request, answered to the sender,
    never stored or logged beside their pseudonyms."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_uid: str


def deidentify_and_parse(path: str, threshold: int, cfg: DeidConfig
                         ) -> tuple[ParsedInstance, bytes, DeidResult, Sent, str]:
    """Validate the file at ``path`` as received, write its de-identified form beside it, and
    parse that: (parsed, stored JSON, de-identification result, the sent UIDs, output path)."""
    original = parse_instance(path, threshold)  # the sender's file must be valid first
    sent = Sent(original.study_uid, original.series_uid, original.sop_class_uid, original.sop_instance_uid)
    out = path + ".deid"
    try:
        result = deidentify_file(path, out, cfg)
        parsed, meta_json = parse_and_encode(out, threshold, None)
    except InvalidInstance:
        _remove(out)
        raise
    except Exception as exc:  # pydicom raises many types on odd input
        _remove(out)
        raise InvalidInstance(f"cannot de-identify: {type(exc).__name__}", CANNOT_UNDERSTAND) from exc
    return parsed, meta_json, result, sent, out


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
