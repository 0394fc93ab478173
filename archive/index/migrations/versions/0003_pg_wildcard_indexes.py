"""Indexes for wildcard matching on PostgreSQL: trigram GIN indexes (the pg_trgm extension) on the
upper-cased person names and the study description, for ``*SMITH*``-style and case-insensitive
PN matching (PS3.4 C.2.2.2.4); pattern-ops B-trees on PatientID and AccessionNumber for prefix
matching; the studies' keys with their patient, for pages far from the first. A frozen copy of
archive/index/schema.py's PG_INDEXES at this revision. SQLite has none of these: on SQLite the
revision changes nothing.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# (index, table, column)
_TRIGRAM = (("ix_patients_name_trgm", "patients", "patient_name_norm"),
            ("ix_studies_referring_trgm", "studies", "referring_physician_name_norm"),
            ("ix_studies_description_trgm", "studies", "study_description"))
_PATTERN = (("ix_patients_id_pattern", "patients", "patient_id"),
            ("ix_studies_accession_pattern", "studies", "accession_number"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # A trusted extension (PostgreSQL 13+): the database's owner may create it.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for name, table, column in _TRIGRAM:
        op.create_index(name, table, [column], postgresql_using="gin",
                        postgresql_ops={column: "gin_trgm_ops"})
    for name, table, column in _PATTERN:
        op.create_index(name, table, [column], postgresql_ops={column: "text_pattern_ops"})
    op.create_index("ix_studies_pk_patient", "studies", ["pk"], postgresql_include=["patient_pk"])


def downgrade() -> None:
    raise NotImplementedError("not undone: restore the backup taken before the upgrade")
