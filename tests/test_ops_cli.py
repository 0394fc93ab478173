"""``imaging-archive stats``, ``export`` and ``delete``, and the UIDs as fields of JSON log lines,
on an archive filled by ``imaging-archive ingest`` (subprocesses, as an operator runs them)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from pydicom import Dataset

from tests import synth
from tests.conftest import LiveServer, multipart
from tests.test_bulk_ingest import REPO, cli, indexed_sops, write_config
from tests.test_verify import _keys

CT_STUDY, MR_STUDY, OTHER_PATIENT = synth.uid(), synth.uid(), "OPS-2"


def _fill(tmp_path: Path, extra: str = "") -> tuple[Path, Path, dict[str, bytes], dict[str, int]]:
    """An archive with patient OPS-1 (a CT study of 3 instances, an MR study of 2) and patient
    OPS-2 (one CT instance); the files by SOP Instance UID, and bytes by modality and patient."""
    src = tmp_path / "src"
    src.mkdir()
    files: dict[str, bytes] = {}
    sizes: dict[str, int] = {}
    plan = [(CT_STUDY, "CT", "OPS-1", 3), (MR_STUDY, "MR", "OPS-1", 2), (synth.uid(), "CT", OTHER_PATIENT, 1)]
    for study, modality, patient, n in plan:
        series = synth.uid()
        for i in range(n):
            ds = synth.dataset(study=study, series=series, modality=modality, patient_id=patient,
                               instance_number=i + 1, rows=16, columns=16)
            data = synth.encode(ds)
            (src / f"{len(files)}.dcm").write_bytes(data)
            files[str(ds.SOPInstanceUID)] = data
            for name in (modality, patient):
                sizes[name] = sizes.get(name, 0) + len(data)
    root = tmp_path / "archive"
    config = write_config(root, extra)
    proc = cli("ingest", src, config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, config, files, sizes


@pytest.mark.databases  # stats' GROUP BY must be one PostgreSQL accepts too
def test_stats(tmp_path: Path) -> None:
    root, config, files, sizes = _fill(tmp_path)
    assert cli("release", "set", "--patient", OTHER_PATIENT, "--state", "sequestered",
               config=config).returncode == 0
    proc = cli("stats", "--json", config=config)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    size = sum(len(d) for d in files.values())
    assert stats["totals"] == {"patients": 2, "studies": 3, "series": 3, "instances": 6, "bytes": size}
    assert stats["release_states"]["open"]["instances"] == 5
    assert stats["release_states"]["sequestered"] == {"patients": 1, "studies": 1, "series": 1,
                                                      "instances": 1, "bytes": sizes[OTHER_PATIENT]}
    assert stats["release_states"]["quarantined"]["instances"] == 0
    assert stats["modalities"]["CT"]["instances"] == 4 and stats["modalities"]["CT"]["patients"] == 2
    assert stats["modalities"]["MR"] == {"patients": 1, "studies": 1, "series": 1, "instances": 2,
                                         "bytes": sizes["MR"]}
    assert stats["modalities"]["CT"]["bytes"] == sizes["CT"]
    text = cli("stats", config=config)
    assert text.returncode == 0
    assert "by release state:" in text.stdout and "by modality:" in text.stdout
    assert any(line.split()[:2] == ["total", "2"] for line in text.stdout.splitlines())


def test_export_a_saved_cohort(tmp_path: Path) -> None:
    root, config, files, _ = _fill(tmp_path)
    saved = cli("cohort", "save", "ct studies", "--filters", '{"modality": ["CT"]}', config=config)
    assert saved.returncode == 0, saved.stderr
    cohort_id = saved.stdout.strip()
    out = tmp_path / "export"
    proc = cli("export", cohort_id, out, "--base-url", "https://archive.example/dicom-web", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.dcm")}
    with sqlite3.connect(root / "index.db") as db:
        expected = {f"{st}/{se}/{sop}.dcm": sop for st, se, sop in db.execute(
            "SELECT s.study_uid, r.series_uid, i.sop_uid FROM instances i "
            "JOIN series r ON i.series_pk = r.pk JOIN studies s ON r.study_pk = s.pk "
            "WHERE r.modality = 'CT'")}
    assert set(written) == set(expected) and len(written) == 4
    assert all(written[path] == files[sop] for path, sop in expected.items())  # as stored, byte for byte
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cohort"]["id"] == cohort_id
    assert manifest["totals"]["instances"] == 4 and manifest["totals"]["studies"] == 2
    assert all(row["study_url"].startswith("https://archive.example/dicom-web/studies/")
               for row in manifest["series"])
    again = cli("export", cohort_id, out, config=config)
    assert again.returncode == 0 and "4 were there already" in again.stdout
    assert not list(out.rglob("*.part"))
    unknown = cli("export", "0" * 32, tmp_path / "x", config=config)
    assert unknown.returncode == 2 and "no saved cohort" in unknown.stderr


def test_delete_a_study(tmp_path: Path) -> None:
    root, config, _, _ = _fill(tmp_path, '[log]\nlevel = "info"\nformat = "json"\n')
    before = set(indexed_sops(root))
    stored = {p for p in (root / "files" / "data").rglob("*.dcm")}
    # Without --yes and without a terminal to ask on: nothing happens.
    asked = subprocess.run([sys.executable, "-m", "archive", "delete", "--study", CT_STUDY, "--config",
                            str(config)], capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=REPO,
                           timeout=120)
    assert asked.returncode == 2 and "3 instances" in asked.stderr and "--yes" in asked.stderr
    assert set(indexed_sops(root)) == before

    proc = cli("delete", "--study", CT_STUDY, "--yes", config=config)
    assert proc.returncode == 0, proc.stderr
    after = set(indexed_sops(root))
    assert len(before - after) == 3
    assert len(stored - set((root / "files" / "data").rglob("*.dcm"))) == 3  # the files went too
    logged = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    deleted = [e for e in logged if e["logger"] == "archive.delete"]
    assert deleted and deleted[-1]["study_uid"] == CT_STUDY and deleted[-1]["instances"] == 3
    with sqlite3.connect(root / "index.db") as db:
        assert db.execute("SELECT count(*) FROM patients WHERE patient_id = 'OPS-1'").fetchone() == (1,)
    # The patient's last study: the patient goes with it.
    assert cli("delete", "--study", MR_STUDY, "--yes", config=config).returncode == 0
    with sqlite3.connect(root / "index.db") as db:
        assert db.execute("SELECT count(*) FROM patients WHERE patient_id = 'OPS-1'").fetchone() == (0,)
    assert cli("verify", config=config).returncode == 0  # nothing left behind
    gone = cli("delete", "--study", CT_STUDY, "--yes", config=config)
    assert gone.returncode == 2 and "no study" in gone.stderr
    bad = cli("delete", "--study", "1.2.03", "--yes", config=config)
    assert bad.returncode == 2 and "not a valid UID" in bad.stderr


def test_json_logs_carry_the_uids_as_fields(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    ds = synth.dataset(patient_id="LOG-1")
    (src / "a.dcm").write_bytes(synth.encode(ds))
    (src / "broken.dcm").write_bytes(synth.encode(ds)[:-40])
    config = write_config(tmp_path / "archive", '[log]\nlevel = "info"\nformat = "json"\n')
    proc = cli("ingest", src, "--verbose", config=config)
    assert proc.returncode == 1
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    stored = [e for e in lines if e["logger"] == "archive.ingest" and e.get("outcome") == "stored"]
    assert stored and stored[0]["sop_uid"] == str(ds.SOPInstanceUID)
    assert stored[0]["study_uid"] == str(ds.StudyInstanceUID)
    assert stored[0]["series_uid"] == str(ds.SeriesInstanceUID)
    failed = [e for e in lines if e["logger"] == "archive.bulk" and e.get("outcome") == "failed"]
    assert failed and failed[0]["file"].endswith("broken.dcm") and failed[0]["status"] == "0xC000"


def test_removal_under_a_running_server(tmp_path: Path) -> None:
    """delete and verify --repair while a server runs on the same index. SQLite gives a removed
    row's id to the next new row: a server that kept the ids of studies it had seen would file a
    deleted study sent again under the study that took its id."""
    server = LiveServer(tmp_path)
    server.start()

    def stow(ds: Dataset) -> None:
        body, ctype = multipart([synth.encode(ds)])
        resp = requests.post(f"{server.url}/dicom-web/studies", data=body, timeout=60,
                             headers={"Content-Type": ctype})
        assert resp.status_code == 200, resp.text

    try:
        first = synth.dataset(patient_id="FIRST")
        stow(first)
        deleted = cli("delete", "--study", first.StudyInstanceUID, "--yes", config=server.config)
        assert deleted.returncode == 0, deleted.stderr
        other = synth.dataset(patient_id="OTHER")
        stow(other)  # takes the removed study's row id
        stow(first)  # sent again
        for ds in (first, other):
            found = requests.get(f"{server.url}/dicom-web/studies", timeout=30,
                                 params={"StudyInstanceUID": ds.StudyInstanceUID,
                                         "includefield": "00201208"}).json()
            rows = [(f["00100020"]["Value"][0], f["00201208"]["Value"][0]) for f in found]
            assert rows == [(ds.PatientID, 1)]
        key = _keys(tmp_path)[str(first.SOPInstanceUID)]
        (tmp_path / "files" / "data" / key).unlink()
        repaired = cli("verify", "--repair", "--json", config=server.config)
        assert repaired.returncode == 0, repaired.stdout
        assert json.loads(repaired.stdout)["problems"][0]["kind"] == "missing"
        assert set(indexed_sops(tmp_path)) == {str(other.SOPInstanceUID)}
        stow(first)  # and again, after the repair removed it
        assert set(indexed_sops(tmp_path)) == {str(other.SOPInstanceUID), str(first.SOPInstanceUID)}
    finally:
        server.stop()
