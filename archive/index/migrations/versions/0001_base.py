"""The schema of release 0.1 before the data commons (index schema_info version 1): the base
every later revision builds on. The tables are a frozen copy of archive/index/schema.py as it was
then (not imported from it: the current schema is the head of these revisions, not their base).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
)

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

metadata = MetaData()


schema_info = Table(
    "schema_info", metadata,
    Column("version", Integer, nullable=False),
)

patients = Table(
    "patients", metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_id", String, nullable=False, default=""),
    Column("issuer_of_patient_id", String, nullable=False, default=""),
    Column("patient_name", String),
    Column("patient_name_norm", String),  # upper-cased: PN matching is case-insensitive
    Column("birth_date", String),
    Column("sex", String),
    Column("created", DateTime, server_default=func.now()),
    Index("ux_patients_id", "patient_id", "issuer_of_patient_id", unique=True),
    Index("ix_patients_name", "patient_name_norm"),
)

studies = Table(
    "studies", metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_pk", Integer, ForeignKey("patients.pk"), nullable=False),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("study_date", String),
    Column("study_time", String),
    Column("accession_number", String),
    Column("study_id", String),
    Column("referring_physician_name", String),
    Column("referring_physician_name_norm", String),
    Column("study_description", String),
    Column("patient_age", String),
    Column("modalities", String, nullable=False, default=""),  # backslash-joined, sorted
    Column("num_series", Integer, nullable=False, default=0),
    Column("num_instances", Integer, nullable=False, default=0),
    Column("size", BigInteger, nullable=False, default=0),
    Column("created", DateTime, server_default=func.now()),
    Column("updated", DateTime, server_default=func.now()),
    Index("ix_studies_patient", "patient_pk"),
    Index("ix_studies_date", "study_date"),
    Index("ix_studies_accession", "accession_number"),
    Index("ix_studies_description", "study_description"),
)

series = Table(
    "series", metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_pk", Integer, ForeignKey("studies.pk"), nullable=False),
    Column("series_uid", String(64), nullable=False, unique=True),
    Column("modality", String),
    Column("series_number", Integer),
    Column("series_description", String),
    Column("series_date", String),
    Column("series_time", String),
    Column("body_part_examined", String),
    Column("manufacturer", String),
    Column("institution_name", String),
    Column("pps_start_date", String),
    Column("pps_start_time", String),
    Column("num_instances", Integer, nullable=False, default=0),
    Column("created", DateTime, server_default=func.now()),
    Index("ix_series_study", "study_pk", "modality"),
    Index("ix_series_modality", "modality"),
)

instances = Table(
    "instances", metadata,
    Column("pk", Integer, primary_key=True),
    Column("series_pk", Integer, ForeignKey("series.pk"), nullable=False),
    Column("sop_uid", String(64), nullable=False, unique=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("bits_allocated", Integer),
    Column("number_of_frames", Integer),
    Column("content_date", String),
    Column("content_time", String),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),  # of the data set (after the File Meta)
    Column("storage_key", Text, nullable=False),
    Column("meta_json", LargeBinary, nullable=False),  # zlib(DICOM JSON), bulk data as URIs
    Column("bulk", Text, nullable=False, default="{}"),  # JSON: path -> [offset|null, length]
    Column("pixel", Text),  # JSON: pixel data position and fragments (frames, issue 4)
    Column("created", DateTime, server_default=func.now()),
    Index("ix_instances_series", "series_pk", "instance_number"),
    Index("ix_instances_class", "sop_class_uid"),
)


def upgrade() -> None:
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    raise NotImplementedError("the first revision is not undone: remove the database instead")
