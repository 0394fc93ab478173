"""imaging-archive: an open imaging data commons server (DICOMweb on SQLite and a local folder)."""

__version__ = "0.1.0"
