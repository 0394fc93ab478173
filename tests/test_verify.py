"""``imaging-archive verify [--repair]`` on a real archive (filled by ``imaging-archive ingest``)
whose storage was damaged by hand: a deleted file, a truncated one, one with a flipped byte, an
orphan, a stray copy of a stored instance, an orphan that conflicts, one that does not parse."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from tests import synth
from tests.s3server import MotoS3, moto_s3  # noqa: F401
from tests.test_bulk_ingest import cli, indexed_sops, synth_folder, write_config


def _problems(proc_stdout: str) -> dict[str, set[str]]:
    report = json.loads(proc_stdout)
    found: dict[str, set[str]] = {"missing": set(), "corrupt": set(), "orphan": set()}
    for p in report["problems"]:
        found[p["kind"]].add(p["key"])
    return found


def _keys(root: Path) -> dict[str, str]:
    """SOP Instance UID -> storage key, as indexed."""
    with sqlite3.connect(root / "index.db") as db:
        return dict(db.execute("SELECT sop_uid, storage_key FROM instances"))


def _counts_consistent(root: Path) -> list[Any]:
    """Studies and series whose recorded counts differ from their rows."""
    with sqlite3.connect(root / "index.db") as db:
        return db.execute("""
            SELECT 'study', s.pk FROM studies s WHERE s.num_instances != (SELECT count(*) FROM instances i
                JOIN series r ON i.series_pk = r.pk WHERE r.study_pk = s.pk)
              OR s.num_series != (SELECT count(*) FROM series r WHERE r.study_pk = s.pk)
              OR s.size != (SELECT coalesce(sum(i.size), 0) FROM instances i
                            JOIN series r ON i.series_pk = r.pk WHERE r.study_pk = s.pk)
            UNION ALL SELECT 'series', r.pk FROM series r
              WHERE r.num_instances != (SELECT count(*) FROM instances i WHERE i.series_pk = r.pk)
            UNION ALL SELECT 'empty study', s.pk FROM studies s WHERE s.num_instances = 0
            UNION ALL SELECT 'patient without studies', p.pk FROM patients p
              WHERE NOT EXISTS (SELECT 1 FROM studies s WHERE s.patient_pk = p.pk)""").fetchall()


def test_verify_finds_and_repair_fixes(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    config = write_config(root)
    sops = synth_folder(tmp_path / "src", 12, rows=16, studies=3)
    # One more study whose only instance will go missing: its study and patient must go too.
    lonely = synth.dataset(patient_id="LONELY")
    (tmp_path / "src" / "lonely.dcm").write_bytes(synth.encode(lonely))
    assert cli("ingest", tmp_path / "src", config=config).returncode == 0
    ok = cli("verify", config=config)
    assert ok.returncode == 0 and "0 missing, 0 corrupt, 0 orphan(s)" in ok.stdout, ok.stdout
    keys = _keys(root)
    data = root / "files" / "data"

    missing = keys[str(lonely.SOPInstanceUID)]
    (data / missing).unlink()
    truncated = keys[sops[0]]
    with open(data / truncated, "r+b") as f:
        f.truncate((data / truncated).stat().st_size - 7)
    flipped = keys[sops[1]]  # same size, one byte of pixel data changed: only the hash tells
    with open(data / flipped, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        byte = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x5A]))
    # An orphan: a valid instance in storage that the index never got (a crash, an old backup).
    new = synth.dataset(patient_id="ORPHAN")
    orphan = f"{new.StudyInstanceUID}/{new.SeriesInstanceUID}/{new.SOPInstanceUID}.0123456789ab.dcm"
    (data / orphan).parent.mkdir(parents=True)
    (data / orphan).write_bytes(synth.encode(new))
    # A stray copy of an indexed instance, under another name.
    copy = keys[sops[2]].replace(".dcm", "").rsplit(".", 1)[0] + ".feedfacecafe.dcm"
    shutil.copyfile(data / keys[sops[2]], data / copy)
    # A different data set under an indexed SOP Instance UID, and a file that is not DICOM.
    other = synth.dataset(sop=sops[3], fill=7)
    conflict = keys[sops[3]].rsplit("/", 1)[0] + f"/{sops[3]}.badbadbadbad.dcm"
    (data / conflict).write_bytes(synth.encode(other))
    garbage = keys[sops[4]].rsplit("/", 1)[0] + "/1.2.3.000000000000.dcm"
    (data / garbage).write_bytes(b"\0" * 200)

    found = cli("verify", "--json", config=config)
    assert found.returncode == 1
    problems = _problems(found.stdout)
    assert problems == {"missing": {missing}, "corrupt": {truncated, flipped},
                        "orphan": {orphan, copy, conflict, garbage}}
    quick = cli("verify", "--json", "--quick", config=config)
    assert _problems(quick.stdout)["corrupt"] == {truncated}  # sizes only: the flipped byte passes

    repaired = cli("verify", "--repair", "--json", config=config)
    assert repaired.returncode == 1  # the conflict and the garbage remain, for the operator
    report = json.loads(repaired.stdout)
    outcome = {p["key"]: p.get("repaired") for p in report["problems"]}
    assert outcome[orphan] == "indexed"
    assert outcome[copy].startswith("deleted")
    assert outcome[conflict] is None and outcome[garbage] is None
    assert all(outcome[k].startswith("index rows") for k in (missing, truncated, flipped))
    assert not (data / copy).exists() and not (data / truncated).exists() and not (data / flipped).exists()
    assert (data / conflict).exists() and (data / garbage).exists()  # left as they were
    indexed = indexed_sops(root)
    assert str(new.SOPInstanceUID) in indexed  # indexed in place, under its key
    assert _keys(root)[str(new.SOPInstanceUID)] == orphan
    assert set(indexed) == (set(sops) - {sops[0], sops[1]}) | {str(new.SOPInstanceUID)}
    assert _counts_consistent(root) == []  # counts recomputed, the lonely study and patient gone

    # What remains is what the operator must decide; without it, verify is clean.
    (data / conflict).unlink()
    (data / garbage).unlink()
    clean = cli("verify", config=config)
    assert clean.returncode == 0, clean.stdout
    # The repaired orphan is served like any instance: its metadata came from the same pipeline.
    with sqlite3.connect(root / "index.db") as db:
        row = db.execute("SELECT s.harmonize_how IS NOT NULL, p.release_state FROM studies s "
                         "JOIN patients p ON s.patient_pk = p.pk WHERE s.study_uid = ?",
                         (str(new.StudyInstanceUID),)).fetchone()
    assert row == (1, "open")  # harmonized and given its release state, as at ingest


def test_verify_of_an_empty_archive(tmp_path: Path) -> None:
    proc = cli("verify", config=write_config(tmp_path / "archive"))
    assert proc.returncode == 0
    assert "checked 0 index rows and 0 stored files" in proc.stdout


def test_verify_and_repair_on_the_s3_backend(tmp_path: Path, moto_s3: MotoS3) -> None:  # noqa: F811
    """The same checks through the BlobStore interface of an object store: listed with the
    backend's recursive listing, sizes by HEAD, hashes over downloaded copies."""
    bucket = moto_s3.new_bucket()
    root = tmp_path / "archive"
    root.mkdir()
    config = root / "archive.toml"
    config.write_text('[storage]\nbackend = "s3"\npath = "staging"\n'
                      '[database]\nurl = "sqlite+aiosqlite:///index.db"\n[dimse]\nenabled = false\n'
                      '[log]\nlevel = "warning"\n' + moto_s3.store_toml(bucket), encoding="utf-8")
    sops = synth_folder(tmp_path / "src", 5, studies=2)
    assert cli("ingest", tmp_path / "src", config=config).returncode == 0
    assert cli("verify", config=config).returncode == 0
    s3 = moto_s3.client()
    keys = _keys(root)
    s3.delete_object(Bucket=bucket, Key=f"archive/{keys[sops[0]]}")
    new = synth.dataset(patient_id="S3-ORPHAN")
    orphan = f"{new.StudyInstanceUID}/{new.SeriesInstanceUID}/{new.SOPInstanceUID}.0123456789ab.dcm"
    s3.put_object(Bucket=bucket, Key=f"archive/{orphan}", Body=synth.encode(new))
    found = cli("verify", "--json", config=config)
    assert found.returncode == 1
    assert _problems(found.stdout) == {"missing": {keys[sops[0]]}, "corrupt": set(), "orphan": {orphan}}
    assert json.loads(found.stdout)["complete_listing"] is True
    assert cli("verify", "--repair", config=config).returncode == 0
    assert set(indexed_sops(root)) == set(sops[1:]) | {str(new.SOPInstanceUID)}
    assert cli("verify", config=config).returncode == 0
