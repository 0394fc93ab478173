"""The query model: QIDO-RS parameters, C-FIND identifiers and cohort filters all become a
:class:`archive.query.model.Query`, which :mod:`archive.query.sql` turns into one SQL statement.
PS3.4 C.2.2.2 matching rules live only here."""
