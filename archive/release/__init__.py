"""Release of the commons' data: which patients are open (public), sequestered (held back for
independent evaluation of algorithms) or quarantined (held back by de-identification).

- :mod:`archive.release.sequester`: the sequestration rule (stratified random sampling of whole
  patients, per site), the rule for patients arriving later, the balance report with the
  Jensen-Shannon distance, and small-cell suppression of public counts. Pure functions over plain
  data; docs/sequestration.md states the rule exactly.
"""

from __future__ import annotations

from archive.release.sequester import (
    OPEN,
    QUARANTINED,
    SEQUESTERED,
    Assignment,
    AttributeBalance,
    Cell,
    Decision,
    PatientRecord,
    Refusal,
    SequesterConfig,
    age_band,
    assign_new,
    balance_report,
    format_report,
    js_distance,
    modality_order,
    sequester,
    suppress,
)

__all__ = ["OPEN", "QUARANTINED", "SEQUESTERED", "Assignment", "AttributeBalance", "Cell", "Decision",
           "PatientRecord", "Refusal", "SequesterConfig", "age_band", "assign_new", "balance_report",
           "format_report", "js_distance", "modality_order", "sequester", "suppress"]
