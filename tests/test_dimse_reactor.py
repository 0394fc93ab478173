"""The DIMSE listener's associations wait for work instead of polling (dimse/reactor.py).

pynetdicom's own reactors sleep 1 ms per turn in two threads per association: an idle
association woke the server ~2,000 times a second, taking the GIL from the threads doing the work.
Counted here in context switches of the server process (a count, not a timing)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests import synth
from tests.conftest import LiveServer
from tests.dcmtk import tool

AET = "IMAGING-ARCHIVE"


def _switches(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def test_idle_associations_do_not_poll_and_busy_ones_still_work(tmp_path: Path) -> None:
    server = LiveServer(tmp_path, dimse=True)
    server.start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        datasets = [synth.dataset() for _ in range(3)]
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(Verification)
        for ds in datasets:
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assocs = [ae.associate("127.0.0.1", server.dimse_port, ae_title=AET) for _ in range(3)]
        assert all(a.is_established for a in assocs)
        time.sleep(0.5)  # settle: association set-up is done
        before = _switches(pid)
        time.sleep(2.0)
        idle = _switches(pid) - before
        # Three idle associations: 6 threads waking every 50 ms is ~240 in 2 s (plus the event
        # loop's and the pools' own); pynetdicom's 1 ms sleeps made it ~12,000.
        assert idle < 1500, f"{idle} context switches in 2 s with 3 idle associations"
        # Work is noticed at once, not at the next 50 ms idle turn, and what is read is
        # acknowledged at once (echoscu leaves Nagle's algorithm on: with delayed ACKs each echo
        # took 45 ms): 100 round trips on one association (dcmtk's echoscu; pynetdicom's own
        # requestor races on rapid requests) take ~0.15 s, far under 4 s.
        t0 = time.monotonic()
        echo = subprocess.run([tool("echoscu"), "-aet", "ECHOSCU", "-aec", AET, "--repeat", "100",
                               "127.0.0.1", str(server.dimse_port)], capture_output=True, text=True,
                              timeout=60)
        assert echo.returncode == 0, echo.stdout + echo.stderr
        assert time.monotonic() - t0 < 4.0
        for assoc, ds in zip(assocs, datasets, strict=True):
            assert int(assoc.send_c_echo().Status) == 0
            assert int(assoc.send_c_store(ds).Status) == 0
            assoc.release()
            assert assoc.is_released
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, log
    assert log.count("association released") == 4  # three, and echoscu's
