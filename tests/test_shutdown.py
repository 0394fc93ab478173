"""Graceful shutdown (issue 5): on SIGTERM ``imaging-archive serve`` stops accepting HTTP connections
and DIMSE associations at once, lets in-flight requests and open associations finish (for at most
``[http] shutdown_timeout`` seconds), then exits 0; what it acknowledged is there after a restart."""

from __future__ import annotations

import signal
import socket
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import requests
from pydicom import dcmread

from tests import synth
from tests.conftest import LiveServer, multipart

AET = "IMAGING-ARCHIVE"


def start(root: Path, http_extra: str = "") -> LiveServer:
    server = LiveServer(root, dimse=True)
    if http_extra:
        text = server.config.read_text(encoding="utf-8")
        server.config.write_text(text.replace("[http]\n", f"[http]\n{http_extra}\n", 1), encoding="utf-8")
    server.start()
    return server


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # The listener closed with our SYN still in its backlog: it is going away, but ask again
        # until the port refuses outright.
        return False


def wait_refused(*ports: int, within: float = 5.0) -> float:
    """Seconds until connections to every port are refused (fails after ``within``)."""
    t0 = time.monotonic()
    while not all(refused(p) for p in ports):
        assert time.monotonic() - t0 < within, "still accepting connections"
        time.sleep(0.05)
    return time.monotonic() - t0


def associate(port: int, datasets: list[Any]) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title="STORESCU")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    return assoc


def open_stow(server: LiveServer, body: bytes, ctype: str, sent: int) -> socket.socket:
    """A STOW-RS request whose first ``sent`` body bytes are sent (the rest is still to come)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    sock.sendall(head.encode() + body[:sent])
    return sock


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_sigterm_lets_in_flight_work_finish_then_exits_0(tmp_path: Path) -> None:
    server = start(tmp_path)
    proc = server.proc
    assert proc is not None
    try:
        dimse_data = [synth.dataset(), synth.dataset()]
        http_data = synth.instance(rows=256, columns=256)
        http_sop = str(dcmread(BytesIO(http_data)).SOPInstanceUID)
        assoc = associate(server.dimse_port, dimse_data)
        assert int(assoc.send_c_store(dimse_data[0]).Status) == 0
        body, ctype = multipart([http_data])
        sock = open_stow(server, body, ctype, len(body) // 2)
        time.sleep(0.3)  # the server is reading the body

        proc.send_signal(signal.SIGTERM)
        wait_refused(server.port, server.dimse_port)
        # A new association is refused; the open one goes on.
        from pynetdicom import AE
        late = AE(ae_title="LATE")
        late.add_requested_context(dimse_data[0].SOPClassUID)
        assert not late.associate("127.0.0.1", server.dimse_port, ae_title=AET).is_established
        assert int(assoc.send_c_store(dimse_data[1]).Status) == 0
        assoc.release()
        # The in-flight upload completes and is acknowledged.
        sock.sendall(body[len(body) // 2:])
        response = read_response(sock)
        sock.close()
        assert response.startswith(b"HTTP/1.1 200"), response[:300]
        assert proc.wait(30) == 0  # shutdown_timeout is 30 s; a loaded machine is slow to exit
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, log

    again = start(tmp_path)
    try:
        resp = requests.get(again.url + "/dicom-web/instances", timeout=10)
        sops = {d["00080018"]["Value"][0] for d in resp.json()}
        assert sops == {http_sop, *(str(ds.SOPInstanceUID) for ds in dimse_data)}
        ds = dimse_data[0]
        url = (f"{again.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
               f"/instances/{ds.SOPInstanceUID}")
        assert requests.get(url, headers={"Accept": "multipart/related; type=application/dicom"},
                            timeout=10).status_code == 200
    finally:
        again.stop()


def test_shutdown_is_bounded_by_shutdown_timeout(tmp_path: Path) -> None:
    """A client that stalls mid-upload and an association left idle do not keep the server:
    after ``shutdown_timeout`` (2 s) the request is cancelled (nothing of it kept), the
    association aborted, and the process exits 0."""
    server = start(tmp_path, "shutdown_timeout = 2")
    proc = server.proc
    assert proc is not None
    try:
        ds = synth.dataset()
        assoc = associate(server.dimse_port, [ds])
        body, ctype = multipart([synth.instance(rows=256, columns=256)])
        sock = open_stow(server, body, ctype, len(body) // 2)
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        elapsed = time.monotonic() - t0
        assert 1.5 < elapsed < 8, elapsed
        sock.settimeout(5)
        try:
            response = read_response(sock)
        except OSError:  # reset by the closing server
            response = b""
        assert b" 200 " not in response[:20]
        sock.close()
        for _ in range(50):
            if not assoc.is_established:
                break
            time.sleep(0.1)
        assert not assoc.is_established
    finally:
        server.stop()
    assert "aborting 1 DIMSE association" in (tmp_path / "server.log").read_text()

    again = start(tmp_path)
    try:
        assert requests.get(again.url + "/dicom-web/instances", timeout=10).json() == []
        files = tmp_path / "files"
        assert [p for p in (files / "tmp").iterdir()] == []
        assert [p for p in (files / "data").rglob("*") if p.is_file()] == []
    finally:
        again.stop()


def _wait_held(pid: int, port: int) -> None:
    """Until the server process holds an accepted connection on ``port``."""
    import psutil

    deadline = time.monotonic() + 10
    while not any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
                  for c in psutil.Process(pid).net_connections()):
        assert time.monotonic() < deadline, "the server never accepted the connection"
        time.sleep(0.05)


def test_a_connection_that_never_associates_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    """A TCP connection to the DIMSE port that never sends an A-ASSOCIATE-RQ (a port probe that
    stays open, or one that has just closed) has no work in flight: SIGTERM does not wait the
    ``shutdown_timeout`` (30 s by default) for it."""
    server = start(tmp_path)
    proc = server.proc
    assert proc is not None
    try:
        with socket.create_connection(("127.0.0.1", server.dimse_port), timeout=5):
            pass  # a probe that connects and closes
        probe = socket.create_connection(("127.0.0.1", server.dimse_port), timeout=5)
        _wait_held(proc.pid, server.dimse_port)  # the open probe is in pynetdicom's hands
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert time.monotonic() - t0 < 8
        probe.close()
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, log
    assert "aborting" not in log  # nothing established was cut
