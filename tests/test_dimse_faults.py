"""DIMSE bad input (issue 5): an unknown calling AE, an A-ABORT in the middle of a C-STORE data
set, malformed PDUs and an absurd PDU length on a raw socket. Each time the server drops that
connection in bounded time and memory, stores nothing of it (nor leaves a partly received data set
behind), and answers a good SCU's C-ECHO right after."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import requests
from pynetdicom import AE
from pynetdicom.pdu_primitives import A_ABORT, P_DATA
from pynetdicom.sop_class import Verification

from dimse.server import receive_dir_for
from tests import synth
from tests.conftest import LiveServer

AET = "IMAGING-ARCHIVE"
GOOD = "GOODAE"
TIMEOUTS = "acse_timeout = 3\ndimse_timeout = 3\nnetwork_timeout = 3\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("dimse-faults"),
                      f'[dimse.allow]\nstore = ["{GOOD}"]\nquery = ["{GOOD}"]\nretrieve = ["{GOOD}"]\n',
                      dimse=True)
    live.config.write_text(live.config.read_text().replace("[dimse]\n", "[dimse]\n" + TIMEOUTS))
    live.start()
    try:
        yield live
    finally:
        live.stop()


def scu(aet: str = GOOD) -> AE:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    return ae


def assert_healthy(server: LiveServer) -> None:
    """A good SCU's C-ECHO works; nothing is stored or left staged."""
    assoc = scu().associate("127.0.0.1", server.dimse_port, ae_title=AET)
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    assert status and status.Status == 0
    assert requests.get(server.url + "/dicom-web/instances", timeout=10).json() == []
    staged = [server.root / "files" / "tmp", receive_dir_for(server.root / "files")]
    deadline = time.monotonic() + 5
    while any(list(d.glob("*")) for d in staged if d.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for d in staged if d.exists() for p in d.glob("*")]


def closed_within(sock: socket.socket, seconds: float) -> bytes:
    """Everything the server sends until it closes ``sock`` (which must happen in time)."""
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return got


def test_unknown_calling_ae_is_rejected(server: LiveServer) -> None:
    assoc = scu("BADAE").associate("127.0.0.1", server.dimse_port, ae_title=AET)
    assert assoc.is_rejected
    assert_healthy(server)


def test_abort_in_the_middle_of_a_cstore_data_set(server: LiveServer) -> None:
    ds = synth.dataset(rows=512, columns=512)  # ~512 KB: many P-DATA-TF PDUs
    ae = AE(ae_title=GOOD)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=AET)
    assert assoc.is_established
    send = assoc.dul.send_pdu
    cut = False

    def send_pdu(primitive):  # type: ignore[no-untyped-def]
        """The command goes out whole; of the data set only half of its first P-DATA-TF (as a
        fragment that is not the last), then an A-ABORT, then nothing."""
        nonlocal cut
        if cut:
            return None
        if isinstance(primitive, P_DATA):
            ctx_id, value = primitive.presentation_data_value_list[0]
            if not value[0] & 0x01:  # a data set fragment
                half = P_DATA()
                half.presentation_data_value_list = [[ctx_id, b"\x00" + value[1:len(value) // 2]]]
                send(half)
                abort = A_ABORT()
                abort.abort_source = 0x00
                send(abort)
                cut = True
                return None
        return send(primitive)

    assoc.dul.send_pdu = send_pdu  # type: ignore[method-assign]
    status = assoc.send_c_store(ds)
    assert cut and not status  # no response: the association is gone
    assoc.abort()
    assert_healthy(server)


def _peak_rss_growth(pid: int, during: float, work) -> float:
    import psutil
    proc = psutil.Process(pid)
    before = proc.memory_info().rss
    peak = before
    deadline = time.monotonic() + during
    for _ in work():
        peak = max(peak, proc.memory_info().rss)
        if time.monotonic() > deadline:
            break
    return (peak - before) / 2**20


def test_absurd_pdu_length_is_refused_without_reading_it(server: LiveServer) -> None:
    """An A-ASSOCIATE-RQ header declaring a 4 GB PDU, then data: the connection is closed at
    once (the PDU is longer than our Maximum Length Received allows), nothing is buffered."""
    sock = socket.create_connection(("127.0.0.1", server.dimse_port), timeout=10)
    sock.sendall(b"\x01\x00" + (0xFFFFFFF0).to_bytes(4, "big"))

    def send():
        block = b"\0" * 65536
        for _ in range(160):  # 10 MB, if the server kept reading
            try:
                sock.sendall(block)
            except OSError:
                return
            yield

    started = time.monotonic()
    growth = _peak_rss_growth(server.proc.pid, 10, send)
    closed_within(sock, 5)
    sock.close()
    assert time.monotonic() - started < 10
    assert growth < 20, f"server grew {growth:.0f} MB"
    assert_healthy(server)


@pytest.mark.parametrize("garbage", [
    b"\x47\x45\x54 / HTTP/1.1\r\nHost: x\r\n\r\n",  # an HTTP client on the DIMSE port
    bytes(range(256)) * 4,  # an unknown PDU type with junk
    b"\x01\x00\x00\x00\x00\x40" + b"\x00\x01" + b"\x00" * 10,  # an A-ASSOCIATE-RQ cut short
])
def test_malformed_pdus_end_the_connection(server: LiveServer, garbage: bytes) -> None:
    """Malformed PDUs from a peer that then goes quiet: the connection ends within the
    configured timeouts (3 s here) and the server goes on serving."""
    sock = socket.create_connection(("127.0.0.1", server.dimse_port), timeout=10)
    sock.sendall(garbage)
    started = time.monotonic()
    closed_within(sock, 15)
    sock.close()
    assert time.monotonic() - started < 15
    assert_healthy(server)
