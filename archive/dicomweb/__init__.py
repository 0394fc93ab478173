"""DICOMweb (PS3.18): one module per transaction. Handlers parse the request, call the domain
(ingest, query, index reader) and format the response; no SQL or file access of their own."""
