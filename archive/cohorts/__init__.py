"""Cohorts: studies selected by DICOM attributes, harmonized procedure codes, MIDRC clinical data
and counts, with their numbers, facets and a manifest or zip of their files (docs/cohorts.md).

The filters are a JSON object (:mod:`archive.cohorts.filters`); the DICOM part of them is an
:class:`archive.query.model.Query`, matched by the same SQL as QIDO-RS and C-FIND.
"""

from archive.cohorts.filters import CohortFilters, FilterError, parse_filters
from archive.cohorts.query import CohortResult, cohort_counts, run_query

__all__ = ["CohortFilters", "CohortResult", "FilterError", "cohort_counts", "parse_filters", "run_query"]
