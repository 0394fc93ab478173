"""The index: SQLAlchemy tables for patient, study, series and instance, and the code that
writes (ingest) and reads (retrieve, metadata) them. Matching lives in :mod:`archive.query`."""
