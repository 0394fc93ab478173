"""``imaging-archive ingest``: bulk import of folders, zip files and DICOMDIRs, run as a user runs it
(a subprocess on a configuration file), on the team's real samples (malformed ones included),
real zip files and pydicom's DICOMDIR media; resumed after a SIGKILL; beside a running server."""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import requests

from tests import pg, synth
from tests.conftest import LiveServer, multipart
from tests.samples import all_samples

REPO = Path(__file__).resolve().parents[1]
DICOMDIR_MEDIA = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
TIMEOUT = 300


# -- helpers (also used by test_verify and test_ops_cli) ----------------------------------------

def write_config(root: Path, extra: str = "") -> Path:
    """An archive under ``root``: files/, index.db; logs at warning unless ``extra`` says otherwise."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "archive.toml"
    text = (f'[storage]\npath = "files"\n[database]\nurl = "{pg.database_url(root)}"\n'
            '[dimse]\nenabled = false\n')
    if "[log]" not in extra:
        text += '[log]\nlevel = "warning"\n'
    path.write_text(text + extra, encoding="utf-8")
    return path


def cli(*args: object, config: Path | None = None,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``imaging-archive ARGS --config CONFIG``; fails the test on a stack trace."""
    argv = [sys.executable, "-m", "archive", *map(str, args)] + (["--config", str(config)] if config else [])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def synth_folder(folder: Path, n: int, rows: int = 8, studies: int = 1, prefix: str = "BULK") -> list[str]:
    """``n`` synthetic CT instances over ``studies`` studies as files; their SOP Instance UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uids = [synth.uid() for _ in range(studies)]
    series_uids = [synth.uid() for _ in range(studies)]
    sops = []
    for i in range(n):
        k = i % studies
        ds = synth.dataset(study=study_uids[k], series=series_uids[k], rows=rows, columns=rows,
                           patient_id=f"{prefix}-{k}", instance_number=i + 1)
        (folder / f"{i:05d}.dcm").write_bytes(synth.encode(ds))
        sops.append(str(ds.SOPInstanceUID))
    return sops


def indexed_sops(root: Path) -> Counter[str]:
    with sqlite3.connect(root / "index.db") as db:
        return Counter(r[0] for r in db.execute("SELECT sop_uid FROM instances"))


def report_of(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def by_file(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["file"]: e for e in report["files"]}


# -- folders of real files ----------------------------------------------------------------------

def test_a_folder_of_real_samples_malformed_ones_and_other_files(tmp_path: Path) -> None:
    samples = all_samples()
    src = tmp_path / "src"
    for s in samples:
        target = src / s.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s.path, target)
    (src / "notes.txt").write_text("not DICOM")
    (src / "deep" / "er").mkdir(parents=True)
    (src / "deep" / "er" / "README").write_bytes(b"\0" * 300)
    root = tmp_path / "archive"
    config = write_config(root)
    report_path = tmp_path / "report.json"

    proc = cli("ingest", src, "--report", report_path, config=config)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the malformed samples fail
    report = report_of(report_path)
    files = by_file(report)
    assert report["totals"]["files"] == len(samples) + 2
    assert {Path(f).name for f, e in files.items() if e["outcome"] == "skipped"} == {"notes.txt", "README"}
    stored_by_sop: dict[str, list[str]] = defaultdict(list)
    for s in samples:
        entry = files[str(src / s.name)]
        if s.expected_error is not None:
            assert entry["outcome"] == "failed" and s.expected_error in entry["reason"], (s.name, entry)
        elif entry["outcome"] == "stored":
            stored_by_sop[entry["sop_uid"]].append(s.name)
        else:  # samples that share a SOP Instance UID with another data set: the first one wins
            assert (entry["outcome"], entry["status"]) == ("failed", "0x0111"), (s.name, entry)
    assert all(len(names) == 1 for names in stored_by_sop.values())
    assert indexed_sops(root) == Counter(set(stored_by_sop))  # each stored exactly once, nothing else
    assert "failed, by reason:" in proc.stdout and "0x0111" in proc.stdout
    assert report["totals"]["stored"] == len(stored_by_sop) and report["totals"]["skipped"] == 2

    # Run again: what was done is skipped (read from the state beside the report), the failures
    # are tried again and fail again; nothing more is stored.
    again = cli("ingest", src, "--report", report_path, config=config)
    assert again.returncode == 1
    totals = report_of(report_path)["totals"]
    assert totals["resumed"] == len(stored_by_sop) + 2
    assert totals["processed"] == totals["failed"] == report["totals"]["failed"]
    assert indexed_sops(root) == Counter(set(stored_by_sop))


def test_zip_files_members_streamed_and_other_members_skipped(tmp_path: Path) -> None:
    sops = synth_folder(tmp_path / "flat", 6, studies=2)
    zpath = tmp_path / "upload.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        z.mkdir("study")  # a folder entry: nothing to ingest
        for i, path in enumerate(sorted((tmp_path / "flat").iterdir())):
            z.write(path, f"study/s{i % 2}/{path.name}" if i % 3 else f"IM{i:04d}")  # no extension too
        z.writestr("study/report.pdf", b"%PDF-1.4 not dicom")
        z.writestr("DICOMDIR", synth.instance())  # named like a DICOMDIR: skipped in a zip
    root = tmp_path / "archive"
    config = write_config(root)
    # The zip file given directly, and a folder holding a copy of it: both ways open it.
    folder = tmp_path / "incoming"
    folder.mkdir()
    shutil.copyfile(zpath, folder / "again.zip")
    proc = cli("ingest", zpath, folder, "--report", tmp_path / "r.json", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = report_of(tmp_path / "r.json")
    outcomes = Counter(e["outcome"] for e in report["files"])
    assert outcomes == {"stored": 6, "duplicate": 6, "skipped": 4}, outcomes
    assert all("!" in e["file"] for e in report["files"])  # zip!member
    assert indexed_sops(root) == Counter(sops)


def test_a_dicomdir_given_directly_follows_its_references(tmp_path: Path) -> None:
    media = tmp_path / "cd"
    # The media (a DICOMDIR and the files it names), without the variants of the DICOMDIR that
    # pydicom's tests keep beside it.
    shutil.copytree(DICOMDIR_MEDIA, media, ignore=shutil.ignore_patterns("DICOMDIR-*"))
    dicomdir = pydicom.dcmread(media / "DICOMDIR")
    referenced = [media.joinpath(*r.ReferencedFileID) for r in dicomdir.DirectoryRecordSequence
                  if "ReferencedFileID" in r]
    # Media copied on another system may have lost the upper case of its File IDs.
    (media / "98892003" / "MR700").rename(media / "98892003" / "mr700")
    assert any("MR700" in p.parts for p in referenced)
    gone = next(p for p in referenced if "MR700" not in p.parts)
    gone.unlink()
    (media / "98892003" / "STRAY.dcm").write_bytes(synth.instance())  # in the folder, not in the DICOMDIR
    root = tmp_path / "archive"
    config = write_config(root)
    proc = cli("ingest", media / "DICOMDIR", "--report", tmp_path / "r.json", config=config)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the missing file
    report = report_of(tmp_path / "r.json")
    files = by_file(report)
    assert files[str(gone)]["outcome"] == "failed" and "not found" in files[str(gone)]["reason"]
    assert report["totals"]["stored"] == len(referenced) - 1
    assert sum(indexed_sops(root).values()) == len(referenced) - 1
    assert not any("STRAY" in f for f in files)
    # Walking the folder instead takes every file, the stray one too, and skips the DICOMDIRs.
    walked = cli("ingest", media, "--report", tmp_path / "w.json", config=config)
    assert walked.returncode == 0, walked.stdout + walked.stderr
    entries = report_of(tmp_path / "w.json")["files"]
    assert [e["outcome"] for e in entries if Path(e["file"]).name == "DICOMDIR"] == ["skipped"] * 2
    assert any("STRAY" in e["file"] and e["outcome"] == "stored" for e in entries)


def test_paths_that_do_not_exist_are_a_usage_error(tmp_path: Path) -> None:
    proc = cli("ingest", tmp_path / "nowhere", config=write_config(tmp_path / "archive"))
    assert proc.returncode == 2 and "nowhere" in proc.stderr


# -- interruption -------------------------------------------------------------------------------

def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_killed_mid_way_then_run_again_stores_everything_exactly_once(tmp_path: Path) -> None:
    n = 2500
    sops = synth_folder(tmp_path / "src", n, rows=64, studies=25)
    root = tmp_path / "archive"
    config = write_config(root)
    report_path = tmp_path / "report.json"
    state = tmp_path / "report.json.state"
    argv = [sys.executable, "-m", "archive", "ingest", str(tmp_path / "src"), "--report", str(report_path),
            "--jobs", "2", "--config", str(config)]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT
        while _lines(state) < 300:  # some batches are durably recorded
            assert proc.poll() is None, "the ingest finished before it could be interrupted"
            assert time.monotonic() < deadline, "no progress recorded"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    recorded = _lines(state)
    assert 300 <= recorded < n
    assert not report_path.exists()  # killed: no report

    again = cli("ingest", tmp_path / "src", "--report", report_path, config=config)
    assert again.returncode == 0, again.stdout + again.stderr
    totals = report_of(report_path)["totals"]
    assert totals["resumed"] >= recorded  # the done files were skipped, not read again
    assert totals["processed"] == n - totals["resumed"]
    # Files committed after the last state flush come again and are found stored already.
    assert totals["stored"] + totals["duplicate"] == n and totals["failed"] == 0
    assert indexed_sops(root) == Counter(sops)  # every instance exactly once
    # No blob left over by the killed run (the second run's start removed them): storage holds
    # what the index says and nothing else.
    check = cli("verify", "--quick", config=config)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"checked {n:,} index rows and {n:,} stored files" in check.stdout
    assert not list((root / "files" / "tmp").iterdir())


# -- beside a server ----------------------------------------------------------------------------

def test_runs_beside_a_serving_archive(tmp_path: Path) -> None:
    server = LiveServer(tmp_path)
    server.start()
    try:
        bulk_sops = synth_folder(tmp_path / "src", 400, studies=8)

        def stow(i: int) -> str:
            ds = synth.dataset(patient_id=f"STOW-{i}")
            body, ctype = multipart([synth.encode(ds)])
            r = requests.post(f"{server.url}/dicom-web/studies", data=body, timeout=60,
                              headers={"Content-Type": ctype})
            assert r.status_code == 200, r.text
            return str(ds.SOPInstanceUID)

        argv = [sys.executable, "-m", "archive", "ingest", str(tmp_path / "src"),
                "--config", str(server.config)]
        bulk = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with ThreadPoolExecutor(2) as pool:
            stowed = list(pool.map(stow, range(40)))
        out, err = bulk.communicate(timeout=TIMEOUT)
        assert bulk.returncode == 0, out + err
        found = requests.get(f"{server.url}/dicom-web/instances", params={"limit": "1000"}, timeout=60).json()
        assert sorted(d["00080018"]["Value"][0] for d in found) == sorted(bulk_sops + stowed)
    finally:
        server.stop()


# -- progress -----------------------------------------------------------------------------------

def test_progress_on_a_terminal_and_in_logs(tmp_path: Path) -> None:
    synth_folder(tmp_path / "src", 300, rows=32)
    config = write_config(tmp_path / "archive", '[log]\nlevel = "info"\nformat = "json"\n')
    # On a terminal: one line rewritten in place.
    primary, secondary = pty.openpty()
    argv = [sys.executable, "-m", "archive", "ingest", str(tmp_path / "src"), "--config", str(config)]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(primary)
    assert proc.wait(TIMEOUT) == 0
    text = seen.decode(errors="replace")
    assert "\r300/300 files" in text and "files/s" in text and "MB/s" in text and "ETA" in text
    # Not on a terminal: log lines, with the figures as JSON fields.
    proc2 = cli("ingest", tmp_path / "src", "--restart", "--progress-interval", "0.1", config=config)
    assert proc2.returncode == 0
    progress = [json.loads(line) for line in proc2.stderr.splitlines()
                if line.startswith("{") and '"progress: ' in line]
    assert progress and progress[-1]["files"] == progress[-1]["total_files"] == 300
