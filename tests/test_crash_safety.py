"""Crash safety: the real server is killed with SIGKILL while 4 HTTP clients STOW and 2 dcmtk
storescu associations C-STORE, then restarted on the same folder, several times.

After every restart: each acknowledged instance (listed in the ReferencedSOPSequence of a fully
received 200/202 STOW response, or reported "Success" by storescu) comes back from WADO-RS as it
was sent; everything QIDO-RS lists is retrievable and parses; the index and the files in
``files/data`` match one to one (start-up recovery removed the blobs of interrupted batches);
``files/tmp``, the journal and the server's temporary folder are empty; and a STOW sent as soon as
/healthz answers succeeds.

The kill delays come from a seeded generator; the seed is printed (``pytest -s``) and can be set
with CRASH_SEED to replay a run's delays (thread timing still differs from run to run).
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import random
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import psutil
import pytest
import requests
from pydicom import dcmread

from tests import synth
from tests.conftest import LiveServer, multipart
from tests.dcmtk import tool
from tests.test_dimse import AET, dataset_differences, store_statuses

ROUNDS = 4
HTTP_CLIENTS = 4
ASSOCIATIONS = 2
KILL_AFTER = (0.4, 2.0)  # seconds of ingest before the SIGKILL, drawn per round
STOW_BATCH = (1, 8)  # instances per STOW request
STORESCU_FILES = 20  # instances per storescu association
DICOM_ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
EXTRA_TOML = "[qido]\nmax_results = 100000\n[render]\ncodec_processes = 0\n"


@dataclass(frozen=True)
class Sent:
    study: str
    series: str
    sop: str
    data: bytes  # the PS3.10 file sent
    via: str  # "stow" or "c-store"


@dataclass
class Tally:
    """What the clients sent and what the server acknowledged (shared by the threads)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[str, Sent] = field(default_factory=dict)
    acked: dict[str, Sent] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)  # answers a live server must not give

    def add_sent(self, items: list[Sent]) -> None:
        with self.lock:
            for s in items:
                self.sent[s.sop] = s

    def ack(self, sops: list[str]) -> None:
        with self.lock:
            for sop in sops:
                self.acked[sop] = self.sent[sop]

    def problem(self, text: str) -> None:
        with self.lock:
            self.unexpected.append(text)


class Studies:
    """A few studies of two series each that every client of a round writes into, so that
    concurrent batches create and update the same study and series rows."""

    def __init__(self, rng: random.Random, count: int = 3) -> None:
        self.pairs = [(study, synth.uid()) for study in (synth.uid() for _ in range(count))
                      for _ in range(2)]
        self.rng = rng
        self.lock = threading.Lock()

    def make(self, via: str) -> Sent:
        with self.lock:
            study, series = self.rng.choice(self.pairs)
            fill = self.rng.randrange(1 << 16)
            number = self.rng.randrange(1, 10_000)
        sop = synth.uid()
        data = synth.instance(study=study, series=series, sop=sop, rows=16, columns=16,
                              fill=fill, instance_number=number)
        return Sent(study, series, sop, data, via)


def _referenced_sops(body: dict) -> list[str]:
    return [item["00081155"]["Value"][0] for item in body.get("00081199", {}).get("Value", [])]


def stow_client(url: str, studies: Studies, tally: Tally, stop: threading.Event, rng: random.Random) -> None:
    """STOW batches until the server goes away (or the round ends)."""
    with requests.Session() as session:
        while not stop.is_set():
            batch = [studies.make("stow") for _ in range(rng.randint(*STOW_BATCH))]
            tally.add_sent(batch)
            body, ctype = multipart([s.data for s in batch])
            try:
                resp = session.post(f"{url}/dicom-web/studies", data=body,
                                    headers={"Content-Type": ctype, "Accept": "application/dicom+json"},
                                    timeout=30)
                status = resp.status_code
                answer = resp.json()  # the whole body arrived (urllib3 checks Content-Length)
            except (requests.RequestException, ValueError):
                return  # killed before the answer was complete: nothing acknowledged
            if status in (200, 202):
                tally.ack(_referenced_sops(answer))
            if status != 200:
                tally.problem(f"STOW answered {status}: {str(answer)[:300]}")


def storescu_client(storescu: str, port: int, work: Path, name: str, studies: Studies, tally: Tally,
                    stop: threading.Event) -> None:
    """One storescu association after the other (STORESCU_FILES files each) until the server goes
    away; a file is acknowledged when storescu logs a Success response for it."""
    n = 0
    while not stop.is_set():
        folder = work / f"{name}-{n}"
        folder.mkdir()
        n += 1
        batch = [studies.make("c-store") for _ in range(STORESCU_FILES)]
        paths = {}
        for s in batch:
            path = folder / f"{s.sop}.dcm"
            path.write_bytes(s.data)
            paths[str(path)] = s.sop
        tally.add_sent(batch)
        try:
            proc = subprocess.run([storescu, "-v", "-aet", name, "-aec", AET, "-to", "10", "-ta", "10",
                                   "-td", "20", "127.0.0.1", str(port), *paths],
                                  capture_output=True, text=True, errors="replace", timeout=60)
        except subprocess.TimeoutExpired:
            tally.problem(f"{name}: storescu hung")
            return
        statuses = store_statuses(proc.stdout + proc.stderr)
        tally.ack([paths[p] for p, verdict in statuses.items() if verdict == "Success"])
        if proc.returncode != 0:
            return  # the association broke: the server is gone


# -- checks after a restart -----------------------------------------------------------------------

def parse_multipart(body: bytes, content_type: str) -> list[bytes]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    assert msg.is_multipart()
    return [p.get_payload(decode=True) for p in msg.iter_parts()]


def listed_instances(server: LiveServer) -> dict[str, str]:
    """SOP Instance UID -> Study Instance UID of every instance QIDO-RS lists."""
    resp = requests.get(f"{server.url}/dicom-web/instances", params={"limit": "100000"}, timeout=30)
    assert resp.status_code in (200, 204), resp.text[:300]
    assert "Warning" not in resp.headers, resp.headers["Warning"]  # not cut at a maximum
    found = resp.json() if resp.status_code == 200 else []
    out = {d["00080018"]["Value"][0]: d["0020000D"]["Value"][0] for d in found}
    assert len(out) == len(found), "an instance is listed twice"
    return out


def retrieve_study(server: LiveServer, study: str) -> dict[str, bytes]:
    resp = requests.get(f"{server.url}/dicom-web/studies/{study}", headers={"Accept": DICOM_ANY_TS},
                        timeout=60)
    assert resp.status_code == 200, (study, resp.status_code, resp.text[:300])
    out = {}
    for part in parse_multipart(resp.content, resp.headers["Content-Type"]):
        ds = dcmread(BytesIO(part))  # a half-written file would not parse
        ds.PixelData  # noqa: B018 - and its pixel data must be complete
        out[str(ds.SOPInstanceUID)] = part
    return out


def check_archive(server: LiveServer, tally: Tally) -> int:
    """Every acknowledged instance is back as sent, every listed one is whole and retrievable;
    returns how many instances are listed."""
    listed = listed_instances(server)
    missing = sorted(set(tally.acked) - set(listed))
    assert not missing, f"{len(missing)} acknowledged instance(s) lost, e.g. {missing[:3]}"
    by_study: dict[str, set[str]] = {}
    for sop, study in listed.items():
        by_study.setdefault(study, set()).add(sop)
    problems: list[str] = []
    for study, sops in by_study.items():
        files = retrieve_study(server, study)
        if set(files) != sops:
            problems.append(f"study {study}: listed {len(sops)}, retrieved {len(files)}")
        for sop, data in files.items():
            sent = tally.sent.get(sop)
            if sent is None:
                problems.append(f"{sop} was never sent")
            elif sent.via == "stow":  # STOW-RS stores the file as received
                if data != sent.data:
                    problems.append(f"{sop} (STOW) differs from the file sent")
            else:  # C-STORE: dcmtk re-encodes, pynetdicom adds a File Meta; compare elements
                diffs = dataset_differences(dcmread(BytesIO(sent.data)), dcmread(BytesIO(data)), False)
                if diffs:
                    problems.append(f"{sop} (C-STORE) differs: {diffs[:3]}")
    assert not problems, problems[:10]
    return len(listed)


def index_keys(root: Path) -> set[str]:
    with sqlite3.connect(root / "index.db") as conn:
        return {row[0] for row in conn.execute("SELECT storage_key FROM instances")}


def stored_files(root: Path) -> set[str]:
    data = root / "files" / "data"
    return {p.relative_to(data).as_posix() for p in data.rglob("*")
            if p.is_file() and not p.relative_to(data).as_posix().startswith("journal/")}


def kill(server: LiveServer) -> int:
    """SIGKILL the server; returns how many of its child processes outlived it (then ended)."""
    assert server.proc is not None and server.proc.poll() is None, "the server died on its own"
    children = psutil.Process(server.proc.pid).children(recursive=True)
    server.proc.kill()
    server.proc.wait(10)
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:  # processes the server started: end them by pid
        child.kill()
    return len(alive)


def recovered(log_text: str) -> tuple[int, int]:
    """(unindexed blobs, staged files) start-up recovery reported removing; staged files include
    the temporary files pynetdicom was receiving C-STORE data sets into."""
    blobs = sum(int(n) for n in re.findall(r"removed (\d+) unindexed blob", log_text))
    staged = sum(int(n) for n in re.findall(r"removed (\d+) leftover (?:staged|C-STORE temporary) file",
                                            log_text))
    return blobs, staged


# -- the test -------------------------------------------------------------------------------------

def test_sigkill_during_ingest_loses_nothing_acknowledged(tmp_path: Path, monkeypatch,
                                                         request: pytest.FixtureRequest) -> None:
    storescu = tool("storescu")
    seed = int(os.environ.get("CRASH_SEED", str(random.randrange(1 << 32))))
    print(f"\ncrash safety: seed={seed} (CRASH_SEED={seed} replays the kill delays)")
    rng = random.Random(seed)
    root = tmp_path / "archive"
    root.mkdir()
    # The server's temporary folder (pynetdicom receives C-STORE data sets into temporary files,
    # dimse.server.receive_dir_for): a folder of its own, to see what a kill leaves there.
    # Short (the system's folder, not tmp_path): worker-pool sockets live below it, and a
    # socket path holds at most 107 bytes.
    server_tmp = Path(tempfile.mkdtemp(prefix="ia-crash-"))
    request.addfinalizer(lambda: shutil.rmtree(server_tmp, ignore_errors=True))
    monkeypatch.setenv("TMPDIR", str(server_tmp))
    work = tmp_path / "storescu"
    work.mkdir()
    tally = Tally()
    server = LiveServer(root, EXTRA_TOML, dimse=True)
    server.start()
    totals = {"kills": 0, "blobs": 0, "staged": 0, "orphan_children": 0}
    started = time.monotonic()
    try:
        for rnd in range(1, ROUNDS + 1):
            studies = Studies(random.Random(rng.random()))
            stop = threading.Event()
            threads = [threading.Thread(target=stow_client, name=f"stow-{i}",
                                        args=(server.url, studies, tally, stop, random.Random(rng.random())))
                       for i in range(HTTP_CLIENTS)]
            threads += [threading.Thread(target=storescu_client, name=f"storescu-{i}",
                                         args=(storescu, server.dimse_port, work, f"CRASH{rnd}{i}", studies,
                                               tally, stop))
                        for i in range(ASSOCIATIONS)]
            delay = rng.uniform(*KILL_AFTER)
            acked_before, sent_before = len(tally.acked), len(tally.sent)
            for t in threads:
                t.start()
            time.sleep(delay)
            totals["orphan_children"] += kill(server)
            totals["kills"] += 1
            stop.set()
            for t in threads:
                t.join(90)
                assert not t.is_alive(), f"{t.name} hangs"
            assert not tally.unexpected, tally.unexpected[:5]
            log_size = (root / "server.log").stat().st_size

            server.start()  # same folder, same ports
            # Ingest works at once: a STOW sent as soon as /healthz answers.
            first = studies.make("stow")
            tally.add_sent([first])
            body, ctype = multipart([first.data])
            resp = requests.post(f"{server.url}/dicom-web/studies", data=body,
                                 headers={"Content-Type": ctype}, timeout=30)
            assert resp.status_code == 200, resp.text[:300]
            assert _referenced_sops(resp.json()) == [first.sop]
            tally.ack([first.sop])

            # Leftovers are gone: staged files, the journal, pynetdicom's temporary files.
            assert list((root / "files" / "tmp").iterdir()) == []
            journal = root / "files" / "data" / "journal"
            assert not journal.exists() or list(journal.iterdir()) == []
            # (The running server's own folder, archive.runtime, holds its live worker-pool socket.)
            live = str(server.proc.pid)
            assert [p for p in server_tmp.rglob("*")
                    if not p.is_dir() and live not in p.relative_to(server_tmp).parts] == []
            # The index and the files match one to one: no row without its file, no file
            # without its row (recovery removed the blobs of the interrupted batches).
            keys, files = index_keys(root), stored_files(root)
            assert keys - files == set(), f"index rows without a file: {sorted(keys - files)[:3]}"
            assert files - keys == set(), f"files without an index row: {sorted(files - keys)[:3]}"
            listed = check_archive(server, tally)
            assert listed == len(keys)

            with open(root / "server.log", "rb") as f:
                f.seek(log_size)
                blobs, staged = recovered(f.read().decode("utf-8", "replace"))
            totals["blobs"] += blobs
            totals["staged"] += staged
            print(f"round {rnd}: killed after {delay:.2f} s; sent {len(tally.sent) - sent_before}, "
                  f"acknowledged {len(tally.acked) - acked_before} (with the STOW after restart); "
                  f"start-up removed {blobs} unindexed blob(s), {staged} staged file(s); "
                  f"listed {listed} in all")
    finally:
        server.stop()
    by_via = {v: sum(1 for s in tally.acked.values() if s.via == v) for v in ("stow", "c-store")}
    print(f"crash safety: {ROUNDS} rounds, {totals['kills']} kills, sent {len(tally.sent)}, "
          f"acknowledged {len(tally.acked)} (STOW {by_via['stow']}, C-STORE {by_via['c-store']}), "
          f"unacknowledged but stored {listed - len(tally.acked)}; recovered orphans: "
          f"{totals['blobs']} unindexed blob(s), {totals['staged']} staged file(s); "
          f"child processes left by a kill: {totals['orphan_children']}; "
          f"{time.monotonic() - started:.1f} s")
    assert by_via["stow"] > 0 and by_via["c-store"] > 0
    assert totals["orphan_children"] == 0
