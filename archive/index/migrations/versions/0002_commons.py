"""The data commons (index schema_info version 3): the harmonized procedure of studies, release
states of patients, quarantine reasons of instances, clinical data (MIDRC's case, measurement
and imaging_study nodes), the release log, saved cohorts, and the indexes of the cohort queries.
New tables are a frozen copy of archive/index/schema.py at this revision.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
)

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

metadata = MetaData()

# Clinical data (archive.clinical): MIDRC data dictionary nodes, keyed by their submitter_id.
# A case's submitter_id is the PatientID of its images (patients.patient_id), an imaging_study's
# is the StudyInstanceUID (studies.study_uid). No foreign keys to the image tables: clinical data
# may arrive before or without the images, and the linkage report lists what does not match.
# Times are days from the case's index event, as in MIDRC; an age over 89 is only a flag.
cases = Table(
    "cases", metadata,
    Column("pk", Integer, primary_key=True),
    Column("submitter_id", String, nullable=False, unique=True),
    Column("project_id", String),
    Column("age_at_index", Integer),  # 0-89 years; null when over 89 (see age_at_index_gt89)
    Column("age_at_index_gt89", String),  # "Yes" | "No" (MIDRC's enumeration)
    Column("sex", String),
    Column("race", String),
    Column("ethnicity", String),
    Column("covid19_positive", String),
    Column("index_event", String),
    Column("icu_indicator", Boolean),
    Column("ventilator_indicator", Boolean),
    Column("site", String),  # MIDRC's site_id
    Column("created", DateTime, server_default=func.now()),
    Column("updated", DateTime, server_default=func.now()),
    Index("ix_cases_sex", "sex"),
    Index("ix_cases_race", "race"),
    Index("ix_cases_ethnicity", "ethnicity"),
    Index("ix_cases_covid19", "covid19_positive"),
    Index("ix_cases_age", "age_at_index", "age_at_index_gt89"),
)

measurements = Table(
    "measurements", metadata,
    Column("pk", Integer, primary_key=True),
    Column("submitter_id", String, nullable=False, unique=True),
    Column("case_submitter_id", String, ForeignKey("cases.submitter_id"), nullable=False),
    Column("project_id", String),
    Column("test_name", String),
    Column("test_method", String),
    Column("test_result_text", String),
    Column("test_days_from_index", Integer),
    Column("created", DateTime, server_default=func.now()),
    Column("updated", DateTime, server_default=func.now()),
    Index("ix_measurements_case", "case_submitter_id"),
    Index("ix_measurements_result", "test_result_text"),
)

imaging_study_clinical = Table(
    "imaging_study_clinical", metadata,
    Column("pk", Integer, primary_key=True),
    Column("submitter_id", String(64), nullable=False, unique=True),  # the StudyInstanceUID
    Column("case_submitter_id", String, ForeignKey("cases.submitter_id"), nullable=False),
    Column("project_id", String),
    Column("days_to_study", Integer),
    Column("days_from_study_to_pos_covid_test", JSON),  # list of integers, as in MIDRC
    Column("days_from_study_to_neg_covid_test", JSON),
    Column("created", DateTime, server_default=func.now()),
    Column("updated", DateTime, server_default=func.now()),
    Index("ix_imaging_study_clinical_case", "case_submitter_id"),
)


# Every change of a patient's release state: who, when, by which rule (archive.release).
release_log = Table(
    "release_log", metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_id", String, nullable=False),
    Column("issuer_of_patient_id", String, nullable=False, default=""),
    Column("previous_state", String),
    Column("state", String, nullable=False),
    Column("actor", String, nullable=False),  # token name, "cli", "ingest"
    Column("rule", String, nullable=False),  # e.g. "manual", "sequester v1 seed=1 fraction=0.2"
    Column("reason", String),
    Column("at", DateTime, server_default=func.now()),
    Index("ix_release_log_patient", "patient_id"),
)


# Saved cohorts (archive.cohorts): a name and the filter object that defines the cohort. Its
# studies are selected again from the filters on every read, so a cohort follows the archive.
cohorts = Table(
    "cohorts", metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("filters", Text, nullable=False),  # JSON: the normalized filter object
    Column("created", DateTime, server_default=func.now()),
)

_STUDY_COLUMNS = [("loinc_code", sa.String()), ("loinc_name", sa.String()),
                  ("loinc_system", sa.String()), ("loinc_region", sa.String()),
                  ("loinc_timing", sa.String()), ("harmonize_how", sa.String()),
                  ("harmonize_confidence", sa.Float()), ("harmonize_reason", sa.String()),
                  ("harmonize_version", sa.String()), ("procedure_codes", sa.Text())]


def upgrade() -> None:
    with op.batch_alter_table("patients") as t:
        t.add_column(sa.Column("release_state", sa.String(), nullable=False, server_default="open"))
        t.create_index("ix_patients_release", ["release_state"])
        t.create_index("ix_patients_id_release", ["patient_id", "release_state"])
    with op.batch_alter_table("studies") as t:
        for name, type_ in _STUDY_COLUMNS:
            t.add_column(sa.Column(name, type_))
        t.create_index("ix_studies_loinc", ["loinc_code"])
        t.create_index("ix_studies_patient_date", ["patient_pk", "study_date"])
    with op.batch_alter_table("instances") as t:
        t.add_column(sa.Column("quarantine_reason", sa.String()))
    metadata.create_all(op.get_bind())
    op.create_index("ix_cases_cohort", "cases", ["covid19_positive", "sex", "age_at_index"])
    op.execute("UPDATE schema_info SET version = 3")
    # Existing studies are placed on harmonized procedures by `imaging-archive harmonize apply`.


def downgrade() -> None:
    raise NotImplementedError("not undone: restore the backup taken before the upgrade")
