"""Release states over the index (issue 7): pending patients, ``imaging-archive sequester`` on
stored patients with clinical data, assignment on ingest, ``release set``, and the log."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from archive.app import create_app
from archive.config import load
from tests import synth
from tests.clinical_data import write_clinical_files
from tests.conftest import multipart

STUDIES = "/dicom-web/studies"


def _config(tmp_path: Path, release: str) -> Path:
    path = tmp_path / "archive.toml"
    path.write_text(f'[storage]\npath = "{tmp_path / "files"}"\n'
                    f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "index.db"}"\n'
                    '[dimse]\nenabled = false\n[ingest]\nparse_processes = 0\n'
                    f'[render]\ncodec_processes = 0\n[release]\n{release}\n', encoding="utf-8")
    return path


async def _store(client: Any, pairs: list[tuple[str, str]], modality: str = "CT") -> None:
    parts = [synth.instance(study=study, patient_id=pid, modality=modality) for pid, study in pairs]
    for i in range(0, len(parts), 50):
        body, ctype = multipart(parts[i:i + 50])
        resp = await client.post(STUDIES, data=body, headers={"Content-Type": ctype})
        assert resp.status == 200, await resp.text()


async def _import_clinical(client: Any, folder: Path) -> None:
    for name in ("case.tsv", "measurement.tsv", "imaging_study.tsv"):
        node = name.split(".")[0]
        resp = await client.post(f"/api/clinical?node={node}", data=(folder / name).read_bytes(),
                                 headers={"Content-Type": "text/tab-separated-values"})
        assert resp.status == 200, await resp.text()


def _cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def _states(client: Any) -> dict[str, str]:
    resp = await client.get("/api/release/log")
    states: dict[str, str] = {}
    for entry in await resp.json():
        states[entry["patient_id"]] = entry["state"]
    return states


async def test_pending_patients_are_sequestered_by_the_rule(aiohttp_client, tmp_path: Path) -> None:
    cfg_path = _config(tmp_path, 'initial_state = "pending"')
    client = await aiohttp_client(create_app(load(cfg_path)))
    pairs = [(f"SQ-{i:04d}", synth.uid()) for i in range(200)]
    await _store(client, pairs)
    truth = write_clinical_files(tmp_path / "clinical", pairs, seed=5)
    await _import_clinical(client, tmp_path / "clinical")
    out = _cli("sequester", "--fraction", "0.2", "--seed", "1", "--config", str(cfg_path))
    for attribute in ("covid", "age_band", "race", "sex", "ethnicity", "site"):
        assert re.search(rf"^{attribute}: Jensen-Shannon distance 0\.\d+$", out, re.M), (attribute, out)
    assert "200 patient(s) assigned" in out
    states = await _states(client)
    assert len(states) == 200 and set(states.values()) == {"open", "sequestered"}
    share = sum(s == "sequestered" for s in states.values()) / len(states)
    assert 0.12 <= share <= 0.28, share
    # Whole patients: every study of a patient has its patient's state (one row per patient).
    assert set(states) == {pid for pid, _ in pairs} and len(truth.cases) >= 200
    # Again: nobody moves; a patient released as open is never moved.
    again = _cli("sequester", "--fraction", "0.5", "--seed", "2", "--config", str(cfg_path))
    assert "0 patient(s) assigned" in again
    assert await _states(client) == states
    log = await (await client.get("/api/release/log")).json()
    assert {e["rule"] for e in log} == {"sequester v1 seed=1 fraction=0.2 "
                                        "strata=covid,age_band,race,sex,ethnicity min_stratum=5"}
    assert all(e["actor"].startswith("cli:") and e["previous_state"] == "pending" for e in log)


async def test_new_patients_are_assigned_on_ingest(aiohttp_client, tmp_path: Path) -> None:
    cfg_path = _config(tmp_path, "assign_on_ingest = true\nfraction = 0.5\nseed = 3")
    client = await aiohttp_client(create_app(load(cfg_path)))
    pairs = [(f"NEW-{i:03d}", synth.uid()) for i in range(60)]
    for i in range(0, 60, 10):  # arriving over time
        await _store(client, pairs[i:i + 10])
    states = await _states(client)
    assert sorted(states) == sorted(p for p, _ in pairs)
    log = await (await client.get("/api/release/log")).json()
    assert all(e["actor"] == "ingest" and "seed=3 fraction=0.5" in e["rule"] for e in log)
    sequestered = sum(s == "sequestered" for s in states.values())
    assert 20 <= sequestered <= 40, sequestered  # the running balance keeps it near half
    # A second instance of a known patient does not reassign it.
    await _store(client, [(pairs[0][0], synth.uid())])
    assert len(await (await client.get("/api/release/log")).json()) == 60


async def test_release_set_from_the_command_line(aiohttp_client, tmp_path: Path) -> None:
    cfg_path = _config(tmp_path, "")
    client = await aiohttp_client(create_app(load(cfg_path)))
    study = synth.uid()
    await _store(client, [("CLI-1", study)])
    assert "CLI-1: open -> sequestered" in _cli("release", "set", "--patient", "CLI-1", "--state",
                                                "sequestered", "--reason", "held back", "--config",
                                                str(cfg_path))
    (entry,) = await (await client.get("/api/release/log")).json()
    assert (entry["state"], entry["previous_state"], entry["reason"]) == ("sequestered", "open", "held back")
    proc = subprocess.run([sys.executable, "-m", "archive", "release", "set", "--patient", "NOBODY",
                           "--state", "open", "--config", str(cfg_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "no patient" in proc.stderr
