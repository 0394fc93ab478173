"""Schema revisions (Alembic): an index written by the release before the data commons (schema
version 1) is refused by this server with the command to run, `imaging-archive db upgrade`
brings it to the head revision with its data, and the server then serves it."""

from __future__ import annotations

import importlib.util
import sqlite3
import subprocess
import sys
from pathlib import Path

import requests
import sqlalchemy

from archive.index import migrate
from tests import synth
from tests.conftest import LiveServer, multipart

REPO = Path(__file__).resolve().parents[1]


def _v1_database(path: Path) -> None:
    """A database as release 0.1 made it: the frozen tables of revision 0001, schema_info 1, no
    Alembic table; one patient, study, series and instance row."""
    spec = importlib.util.spec_from_file_location(
        "rev0001", REPO / "archive/index/migrations/versions/0001_base.py")
    assert spec is not None and spec.loader is not None
    rev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rev)
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    rev.metadata.create_all(engine)
    engine.dispose()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_info (version) VALUES (1)")
        db.execute("INSERT INTO patients (pk, patient_id, issuer_of_patient_id) VALUES (1, 'OLD-1', '')")
        db.execute("INSERT INTO studies (pk, patient_pk, study_uid, study_description, modalities, "
                   "num_series, num_instances, size) "
                   "VALUES (1, 1, '1.2.3.4', 'CT CHEST W/O CONTRAST', 'CT', 1, 1, 10)")
        db.execute("INSERT INTO series (pk, study_pk, series_uid, modality, num_instances) "
                   "VALUES (1, 1, '1.2.3.4.5', 'CT', 1)")


def test_an_index_of_the_previous_release_is_upgraded(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    _v1_database(root / "index.db")
    server = LiveServer(root)
    cmd = [sys.executable, "-m", "archive"]
    # This server refuses it, naming the command.
    proc = subprocess.run([*cmd, "serve", "--config", str(server.config)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "imaging-archive db upgrade" in proc.stderr and "0001" in proc.stderr
    out = subprocess.run([*cmd, "db", "upgrade", "--config", str(server.config)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "from revision 0001 to 0002" in out.stdout
    again = subprocess.run([*cmd, "db", "upgrade", "--config", str(server.config)], capture_output=True,
                           text=True, timeout=60)
    assert "at revision 0002 already" in again.stdout
    with sqlite3.connect(root / "index.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("0002",)]
        assert db.execute("SELECT version FROM schema_info").fetchall() == [(3,)]
        assert db.execute("SELECT release_state FROM patients").fetchall() == [("open",)]
    # The same tables and indexes as a database this release creates.
    fresh = tmp_path / "fresh.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{fresh}")
    with engine.begin() as conn:
        from archive.index.schema import metadata
        metadata.create_all(conn)
        migrate.stamp_head(conn)
    engine.dispose()
    for table in ("patients", "studies", "series", "instances", "cases", "measurements",
                  "imaging_study_clinical", "release_log", "cohorts"):
        assert _shape(root / "index.db", table) == _shape(fresh, table), table
    subprocess.run([*cmd, "harmonize", "apply", "--config", str(server.config)], check=True,
                   capture_output=True, timeout=60)
    server.start()
    try:
        body, ctype = multipart([synth.instance(patient_id="NEW-1")])
        assert requests.post(f"{server.url}/dicom-web/studies", data=body, headers={"Content-Type": ctype},
                             timeout=30).status_code == 200
        found = requests.get(f"{server.url}/dicom-web/studies", params={"StudyInstanceUID": "1.2.3.4"},
                             timeout=30).json()
        assert [c["00080100"]["Value"][0] for c in found[0]["00081032"]["Value"]] == ["29252-4"]
    finally:
        server.stop()


def _shape(path: Path, table: str) -> tuple[list[tuple[str, str, int]], set[tuple[str, ...]]]:
    """Columns (name, type, not null) and indexes (their columns) of ``table``."""
    with sqlite3.connect(path) as db:
        columns = sorted((r[1], r[2].upper(), r[3]) for r in db.execute(f"PRAGMA table_info({table})"))
        indexes = {tuple(c[2] for c in db.execute(f"PRAGMA index_info('{i[1]}')"))
                   for i in db.execute(f"PRAGMA index_list({table})")}
    return columns, indexes
