"""pydicom helpers: Part 10 parsing at ingest, DICOM JSON with BulkDataURIs, UID checks."""
