"""Index tables (SQLAlchemy Core). Query keys are columns with indexes; each instance also keeps
its DICOM JSON (zlib-compressed, bulk data as URIs) so metadata reads never touch the files."""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    event,
    func,
)

metadata = MetaData()

# Bump when the schema changes; the server refuses to run on another version (migrations: issue 8).
SCHEMA_VERSION = 3  # 2: harmonized procedure, clinical data; 3: release states, quarantine

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
    # Release state (archive.release): open, sequestered or quarantined. Only open data is public.
    Column("release_state", String, nullable=False, server_default="open"),
    Column("created", DateTime, server_default=func.now()),
    Index("ux_patients_id", "patient_id", "issuer_of_patient_id", unique=True),
    Index("ix_patients_release", "release_state"),
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
    # The harmonized procedure (archive.harmonize): a LOINC / RSNA Radiology Playbook code with
    # its Long Common Name and attributes, or none with the reason.
    Column("loinc_code", String),
    Column("loinc_name", String),
    Column("loinc_system", String),  # L-System, the body region, e.g. "Chest"
    Column("loinc_region", String),  # MIDRC's grouping of body regions, for cohorts
    Column("loinc_timing", String),  # contrast timing, e.g. "WO", "W", "WO & W"
    Column("harmonize_how", String),  # exact | override | matched | unmapped
    Column("harmonize_confidence", Float),
    Column("harmonize_reason", String),
    Column("harmonize_version", String),  # mapping table version that placed it
    Column("procedure_codes", Text),  # JSON: the items of ProcedureCodeSequence the sender gave
    Index("ix_studies_patient", "patient_pk"),
    Index("ix_studies_loinc", "loinc_code"),
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
    # Why de-identification held it back (e.g. burned-in annotation); NULL: not quarantined.
    Column("quarantine_reason", String),
    Column("created", DateTime, server_default=func.now()),
    Index("ix_instances_series", "series_pk", "instance_number"),
    Index("ix_instances_class", "sop_class_uid"),
)


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

# Cohort queries (archive.cohorts, bench/cohort.py): the usual demographic selection (COVID-19
# status, sex, an age range) is one range of one index, and a patient's studies in a date range
# are found without reading their rows. A case finds its patient by PatientID and release state
# in one index: with only ux_patients_id and ix_patients_release, SQLite without statistics (the
# archive never runs ANALYZE) may look the patient up by release state, i.e. scan every open one.
Index("ix_cases_cohort", cases.c.covid19_positive, cases.c.sex, cases.c.age_at_index)
Index("ix_studies_patient_date", studies.c.patient_pk, studies.c.study_date)
Index("ix_patients_id_release", patients.c.patient_id, patients.c.release_state)


# PostgreSQL only (revision 0003 makes them on an upgraded database): wildcard matching that uses
# an index, and deep paging. Trigram GIN indexes (pg_trgm) serve LIKE with a leading wildcard
# ("*SMITH*") on the upper-cased person names and the descriptions, and any-collation prefix
# matching; pattern-ops B-trees serve prefix matching ("PID00*") on identifiers, which a B-tree of
# a database whose collation is not C cannot do. SQLite matches these with a scan of the table it
# searches.
event.listen(metadata, "before_create",
             DDL("CREATE EXTENSION IF NOT EXISTS pg_trgm").execute_if(dialect="postgresql"))


def _trigram(name: str, column: Column[str]) -> Index:
    return Index(name, column, postgresql_using="gin",
                 postgresql_ops={column.name: "gin_trgm_ops"}).ddl_if(dialect="postgresql")


def _pattern(name: str, column: Column[str]) -> Index:
    return Index(name, column, postgresql_ops={column.name: "text_pattern_ops"}).ddl_if(dialect="postgresql")


PG_INDEXES = (
    _trigram("ix_patients_name_trgm", patients.c.patient_name_norm),
    _trigram("ix_studies_referring_trgm", studies.c.referring_physician_name_norm),
    _trigram("ix_studies_description_trgm", studies.c.study_description),
    _pattern("ix_patients_id_pattern", patients.c.patient_id),
    _pattern("ix_studies_accession_pattern", studies.c.accession_number),
    # A page of studies far from the first (QIDO-RS offset): the studies in order with their
    # patient, read from the index alone (archive.query.sql._page_keys).
    Index("ix_studies_pk_patient", studies.c.pk,
          postgresql_include=["patient_pk"]).ddl_if(dialect="postgresql"),
)
