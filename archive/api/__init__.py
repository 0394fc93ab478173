"""The commons' JSON API beside DICOMweb: harmonization and cohorts (``/api/...``)."""
