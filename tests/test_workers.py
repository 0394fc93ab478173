"""``serve --workers N``: several server processes on one port sharing the index and storage
(scale-out issue; used by the benchmarks of the reliability issue)."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

from tests import synth
from tests.conftest import LiveServer, multipart
from tests.dcmtk import tool
from tests.test_dimse import AET, run


def _workers(server: LiveServer) -> list[psutil.Process]:
    assert server.proc is not None
    found = []
    for p in psutil.Process(server.proc.pid).children():
        try:
            if "--worker-index" in " ".join(p.cmdline()):
                found.append(p)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):  # a dead worker not yet reaped
            continue
    return found


def _stow(url: str, n: int, tag: str) -> list[str]:
    sops = []
    for i in range(n):
        ds = synth.dataset(patient_id=f"W-{tag}-{i}")
        body, ctype = multipart([synth.encode(ds)])
        # A new connection each time: the kernel picks a worker per connection.
        resp = requests.post(f"{url}/dicom-web/studies", data=body, timeout=60,
                             headers={"Content-Type": ctype, "Connection": "close"})
        assert resp.status_code == 200, resp.text
        sops.append(str(ds.SOPInstanceUID))
    return sops


def test_workers_share_one_port_the_index_and_storage(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    server = LiveServer(root, "[ingest]\nparse_processes = 0\n[render]\ncodec_processes = 0\n"
                              "[http]\nworkers = 2\n", dimse=True)
    # LiveServer writes [http] first; a second [http] table is a TOML error: merge it.
    text = server.config.read_text().replace("[http]\nworkers = 2\n", "")
    server.config.write_text(text.replace("[http]\n", "[http]\nworkers = 2\n", 1))
    server.start()
    try:
        deadline = time.monotonic() + 20
        while len(workers := _workers(server)) < 2:  # both up (the first answered /healthz)
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.1)
        log = (root / "server.log").read_text()
        assert "exited with" not in log, log[-2000:]  # none crashed on the way
        with ThreadPoolExecutor(4) as pool:
            sent = [s for batch in pool.map(lambda t: _stow(server.url, 15, str(t)), range(4)) for s in batch]
        found = requests.get(f"{server.url}/dicom-web/instances", params={"limit": "1000"}, timeout=30).json()
        assert sorted(d["00080018"]["Value"][0] for d in found) == sorted(sent)  # nothing lost or doubled
        # Both workers served: each has its own connections' CPU time.
        assert all(w.cpu_times().user > 0 for w in workers)
        # DIMSE: one listener (worker 0), same index.
        path = tmp_path / "c.dcm"
        ds = synth.dataset(patient_id="W-DIMSE")
        path.write_bytes(synth.encode(ds))
        code, out = run([tool("storescu"), "-aet", "PACS", "-aec", AET, "127.0.0.1", str(server.dimse_port),
                         str(path)])
        assert code == 0, out
        # A worker that dies is restarted, and the port keeps answering meanwhile.
        os.kill(workers[1].pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:
            now = _workers(server)
            if len(now) == 2 and workers[1].pid not in {w.pid for w in now}:
                break
            assert time.monotonic() < deadline, "the worker was not restarted"
            assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
            time.sleep(0.2)
        time.sleep(1)
        found = requests.get(f"{server.url}/dicom-web/studies", params={"PatientID": "W-DIMSE"},
                             timeout=30).json()
        assert len(found) == 1
        assert not [p for p in (root / "files" / "tmp").iterdir()]  # no staged file left behind
    finally:
        assert server.proc is not None
        children = _workers(server)
        server.stop()
    assert server.proc.returncode == 0
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
