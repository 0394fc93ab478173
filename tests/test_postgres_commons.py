"""The data-commons features on PostgreSQL: release states (sequestration, assignment on ingest,
the command line), quarantine on ingest and its deletion, harmonized procedure codes (placed,
served, matched; unmapped report, apply), clinical import (API, command line, concurrent
imports). The tests of test_release, test_deid_ingest and test_procedure_codes run again here
with their configuration file naming the folder's PostgreSQL database instead of its SQLite file
(they write one for the command line); clinical import, whose tests read the SQLite file
directly, has tests of its own here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from archive.clinical import import_clinical
from archive.index.db import create_engine
from archive.index.schema import cases, imaging_study_clinical, measurements
from tests import pg
from tests import test_clinical as clinical_tests
from tests import test_deid_ingest as deid_tests
from tests import test_procedure_codes as procedure_tests
from tests import test_release as release_tests

pytestmark = pytest.mark.databases("postgresql")


def _to_postgres(path: Path, root: Path) -> None:
    """Make the configuration file ``path`` name ``root``'s PostgreSQL database instead of its
    SQLite file."""
    sqlite_url, pg_url = f"sqlite+aiosqlite:///{root / 'index.db'}", pg.database_url(root)
    text = path.read_text(encoding="utf-8")
    assert sqlite_url in text or pg_url in text, text  # else the test would run on SQLite, unnoticed
    path.write_text(text.replace(sqlite_url, pg_url), encoding="utf-8")


def _config_on_postgres(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> None:
    original: Callable[..., Path] = module._config

    def config(tmp_path: Path, *args: Any) -> Path:
        path = original(tmp_path, *args)
        _to_postgres(path, tmp_path)
        return path

    monkeypatch.setattr(module, "_config", config)


async def test_sequestration(aiohttp_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _config_on_postgres(monkeypatch, release_tests)
    await release_tests.test_pending_patients_are_sequestered_by_the_rule(aiohttp_client, tmp_path)


async def test_assignment_on_ingest(aiohttp_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _config_on_postgres(monkeypatch, release_tests)
    await release_tests.test_new_patients_are_assigned_on_ingest(aiohttp_client, tmp_path)


async def test_release_set_from_the_command_line(aiohttp_client, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _config_on_postgres(monkeypatch, release_tests)
    await release_tests.test_release_set_from_the_command_line(aiohttp_client, tmp_path)


async def test_quarantine_on_ingest_and_deletion(aiohttp_client, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _config_on_postgres(monkeypatch, deid_tests)
    await deid_tests.test_burned_in_annotation_quarantines_the_patient(aiohttp_client, tmp_path)


async def test_harmonize_unmapped_and_apply(aiohttp_client, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    original = procedure_tests._cli

    def cli(*args: str) -> str:  # the test's config file is written inline: convert it when used
        _to_postgres(Path(args[args.index("--config") + 1]), tmp_path)
        return original(*args)

    monkeypatch.setattr(procedure_tests, "_cli", cli)
    await procedure_tests.test_unmapped_report_and_apply_after_an_override(aiohttp_client, tmp_path)


async def test_procedure_code_placed_served_and_matched(aiohttp_client, tmp_path: Path) -> None:
    await procedure_tests.test_code_is_placed_served_and_matched(aiohttp_client, tmp_path)


async def _clinical_rows(engine: AsyncEngine) -> dict[str, dict[str, dict[str, Any]]]:
    """Every row of the clinical tables by submitter_id, to prove that a failed import changed nothing."""
    async with engine.connect() as conn:
        return {t.name: {r.submitter_id: dict(r._mapping) for r in (await conn.execute(select(t))).all()}
                for t in (cases, measurements, imaging_study_clinical)}


async def test_clinical_import_reimport_and_a_failed_import(tmp_path: Path) -> None:
    engine = create_engine(pg.database_url(tmp_path))
    try:
        report = await import_clinical(engine, clinical_tests.good_files())
        assert report.ok and {n: c.inserted for n, c in report.counts.items()} == {
            "case": 2, "measurement": 2, "imaging_study": 1}
        stored = await _clinical_rows(engine)
        p2 = stored["cases"]["P2"]
        # An age over 89 is only a flag; booleans are booleans; day lists are JSON.
        assert (p2["age_at_index"], p2["age_at_index_gt89"], p2["icu_indicator"]) == (None, "Yes", False)
        assert stored["imaging_study_clinical"]["1.2.3.4"]["days_from_study_to_pos_covid_test"] == [-2, 5]
        again = await import_clinical(engine, [("case.tsv", clinical_tests.table(
            [clinical_tests.case("P1", race="White")]))])
        assert again.ok and again.counts["case"].updated == 1
        before = await _clinical_rows(engine)
        assert before["cases"]["P1"]["race"] == "White" and before["cases"]["P2"]["race"] == "Asian"
        bad = await import_clinical(engine, [("case.tsv", clinical_tests.table(
            [clinical_tests.case("P7"), clinical_tests.case("P1", sex="F")]))])
        assert not bad.ok and await _clinical_rows(engine) == before  # nothing changed
    finally:
        await engine.dispose()


async def test_concurrent_clinical_imports(tmp_path: Path) -> None:
    # Several engines on one database stand for processes: each import finds the records new,
    # one wins each insert, the others roll back, retry and update.
    url = pg.database_url(tmp_path)
    engines = [create_engine(url) for _ in range(4)]
    try:
        reports = await asyncio.gather(*(import_clinical(e, clinical_tests.good_files())
                                         for e in engines for _ in range(2)))
        assert all(r.ok for r in reports)
        assert sum(r.counts["case"].inserted for r in reports) == 2
        assert sum(r.counts["case"].updated for r in reports) == 2 * (len(reports) - 1)
        assert sum(r.counts["imaging_study"].inserted for r in reports) == 1
        assert sorted((await _clinical_rows(engines[0]))["cases"]) == ["P1", "P2"]
    finally:
        for e in engines:
            await e.dispose()


def test_clinical_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{pg.database_url(tmp_path)}"\n', encoding="utf-8")
    files = []
    for name, data in clinical_tests.good_files():
        (tmp_path / name).write_bytes(data)
        files.append(str(tmp_path / name))
    assert clinical_tests.run_cli("clinical", "import", *files, "--config", str(config)) == 0
    assert "case: 2 inserted, 0 updated" in capsys.readouterr().out
    assert clinical_tests.run_cli("clinical", "report", "--config", str(config), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cases_without_images"] == ["P1", "P2"] and result["patients_with_images"] == 0
