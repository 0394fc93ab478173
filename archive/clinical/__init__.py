"""Clinical data of the MIDRC data dictionary (case, measurement, imaging_study): import with
row-level validation, and the linkage report between clinical records and the images.

- :mod:`archive.clinical.dictionary`: the fields, their types and allowed values (one table);
- :mod:`archive.clinical.importer`: TSV / CSV / JSON files in, all or nothing;
- :mod:`archive.clinical.report`: patients without clinical data, clinical data without images;
- :mod:`archive.clinical.api` and :mod:`archive.clinical.cli`: the HTTP and command-line front ends.
"""

from __future__ import annotations

from archive.clinical.importer import ClinicalError, ImportReport, NodeCounts, import_clinical
from archive.clinical.report import LinkageReport, linkage_report

__all__ = ["ClinicalError", "ImportReport", "LinkageReport", "NodeCounts", "import_clinical",
           "linkage_report"]
