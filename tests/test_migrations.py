"""Schema revisions (Alembic), on SQLite and on PostgreSQL: an index written by the release before
the data commons (schema version 1) is refused by this server with the command to run,
`imaging-archive db upgrade` brings it to the head revision with its data, and the server then
serves it; an empty database upgraded from nothing and one created at head by the server
(create_all, then stamp) have the same tables, columns and indexes, PostgreSQL's trigram and
pattern-ops indexes included."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.engine import Connection

from archive.index import migrate
from archive.index.db import create_engine
from archive.index.schema import metadata
from tests import pg, synth
from tests.conftest import LiveServer, multipart

pytestmark = pytest.mark.databases

REPO = Path(__file__).resolve().parents[1]
TABLES = ("patients", "studies", "series", "instances", "cases", "measurements", "imaging_study_clinical",
          "release_log", "cohorts", "schema_info")
CLI = [sys.executable, "-m", "archive"]
T = TypeVar("T")


def _in_transaction(url: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(connection, *args)`` in one transaction, on an engine of its own (no schema check)."""
    async def work() -> T:
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(fn, *args)
        finally:
            await engine.dispose()

    return asyncio.run(work())


def _write_v1(conn: Connection) -> None:
    """A database as release 0.1 made it: the frozen tables of revision 0001, schema_info 1, no
    Alembic table; one patient, study, series and instance row."""
    spec = importlib.util.spec_from_file_location(
        "rev0001", REPO / "archive/index/migrations/versions/0001_base.py")
    assert spec is not None and spec.loader is not None
    rev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rev)
    rev.metadata.create_all(conn)
    for sql in ("INSERT INTO schema_info (version) VALUES (1)",
                "INSERT INTO patients (pk, patient_id, issuer_of_patient_id) VALUES (1, 'OLD-1', '')",
                "INSERT INTO studies (pk, patient_pk, study_uid, study_description, modalities, num_series, "
                "num_instances, size) VALUES (1, 1, '1.2.3.4', 'CT CHEST W/O CONTRAST', 'CT', 1, 1, 10)",
                "INSERT INTO series (pk, study_pk, series_uid, modality, num_instances) "
                "VALUES (1, 1, '1.2.3.4.5', 'CT', 1)"):
        conn.execute(text(sql))
    if conn.dialect.name == "postgresql":  # rows with explicit keys: move the sequences past them
        for table in ("patients", "studies", "series"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'), 1)"))


def _create_at_head(conn: Connection) -> None:
    """What the server does on a new database (archive.index.db.init_schema)."""
    metadata.create_all(conn)
    migrate.stamp_head(conn)


def _shapes(conn: Connection) -> dict[str, Any]:
    """Columns and indexes of every table (SQLite: each index's columns; PostgreSQL: each index's
    whole definition, its method and operator classes included), and the extensions."""
    out: dict[str, Any] = {}
    for table in TABLES:
        if conn.dialect.name == "sqlite":
            columns = sorted((r[1], r[2].upper(), r[3])
                             for r in conn.exec_driver_sql(f"PRAGMA table_info({table})"))
            indexes = {tuple(c[2] for c in conn.exec_driver_sql(f"PRAGMA index_info('{i[1]}')"))
                       for i in conn.exec_driver_sql(f"PRAGMA index_list({table})")}
        else:
            columns = sorted(tuple(r) for r in conn.execute(text(
                "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = :t"),
                {"t": table}))
            indexes = set(conn.execute(text("SELECT indexdef FROM pg_indexes "
                                            "WHERE schemaname = current_schema() AND tablename = :t"),
                                       {"t": table}).scalars())
        assert columns, table
        out[table] = (columns, indexes)
    if conn.dialect.name == "postgresql":
        out["extensions"] = set(conn.execute(text("SELECT extname FROM pg_extension")).scalars())
    return out


def _head_shapes(tmp_path: Path) -> dict[str, Any]:
    url = pg.database_url(tmp_path / "fresh", empty=True)
    _in_transaction(url, _create_at_head)
    return _in_transaction(url, _shapes)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_an_index_of_the_previous_release_is_upgraded(tmp_path: Path, db_backend: str) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    url = pg.database_url(root, empty=True)
    _in_transaction(url, _write_v1)
    server = LiveServer(root)
    # This server refuses it, naming the command.
    proc = _cli("serve", "--config", str(server.config))
    assert proc.returncode == 2 and "imaging-archive db upgrade" in proc.stderr and "0001" in proc.stderr
    out = _cli("db", "upgrade", "--config", str(server.config))
    assert out.returncode == 0, out.stderr
    assert "from revision 0001 to 0003" in out.stdout
    assert "at revision 0003 already" in _cli("db", "upgrade", "--config", str(server.config)).stdout

    def rows(conn: Connection) -> tuple[Any, ...]:
        return tuple(conn.execute(text(sql)).all() for sql in (
            "SELECT version_num FROM alembic_version", "SELECT version FROM schema_info",
            "SELECT release_state FROM patients"))

    assert _in_transaction(url, rows) == ([("0003",)], [(3,)], [("open",)])
    # The same tables, columns and indexes as a database this release creates.
    assert _in_transaction(url, _shapes) == _head_shapes(tmp_path)
    subprocess.run([*CLI, "harmonize", "apply", "--config", str(server.config)], check=True,
                   capture_output=True, timeout=60)
    server.start()
    try:
        body, ctype = multipart([synth.instance(patient_id="NEW-1")])
        assert requests.post(f"{server.url}/dicom-web/studies", data=body, headers={"Content-Type": ctype},
                             timeout=30).status_code == 200
        found = requests.get(f"{server.url}/dicom-web/studies", params={"StudyInstanceUID": "1.2.3.4"},
                             timeout=30).json()
        assert [c["00080100"]["Value"][0] for c in found[0]["00081032"]["Value"]] == ["29252-4"]
        assert len(requests.get(f"{server.url}/dicom-web/studies", timeout=30).json()) == 2
    finally:
        server.stop()


def test_an_empty_database_upgraded_equals_one_made_at_head(tmp_path: Path, db_backend: str) -> None:
    """`db upgrade` on an empty database runs every revision from 0001; the result is what the
    server creates on a new database, so both ways lead to the same index."""
    root = tmp_path / "empty"
    root.mkdir()
    url = pg.database_url(root, empty=True)
    config = root / "archive.toml"
    config.write_text(f'[database]\nurl = "{url}"\n', encoding="utf-8")
    out = _cli("db", "upgrade", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert "from revision (new) to 0003" in out.stdout
    upgraded = _in_transaction(url, _shapes)
    assert upgraded == _head_shapes(tmp_path)
    if db_backend == "postgresql":
        assert "pg_trgm" in upgraded["extensions"]
        assert ("CREATE INDEX ix_patients_name_trgm ON public.patients USING gin "
                "(patient_name_norm gin_trgm_ops)") in upgraded["patients"][1]
