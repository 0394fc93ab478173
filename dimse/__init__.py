"""DIMSE services with pynetdicom: C-ECHO, C-STORE (through the ingest pipeline), C-FIND, C-MOVE and
C-GET (Patient Root and Study Root), with per-service allow-lists of calling AE titles.

:mod:`dimse.server` builds the AE and runs the listener, :mod:`dimse.handlers` answers the
requests on the archive's event loop, :mod:`dimse.policy` holds the ``[dimse.allow]`` lists.
"""
