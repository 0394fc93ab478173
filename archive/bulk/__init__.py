"""Operator tools that work on the whole archive from the command line, in-process, against the
configured index and storage: bulk ingest (``imaging-archive ingest``), and the resources, removal
and commands that ``verify``, ``stats``, ``export`` and ``delete`` share (docs/operations.md).
"""
