"""Slow clients (issue 5): ``[http] read_timeout`` closes a connection that stops sending in the
middle of a request's headers or body, and never one that keeps moving, however slowly.

Raw sockets against a real server (``imaging-archive serve``) with a 2 s timeout."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import requests

from tests import synth
from tests.conftest import LiveServer, multipart

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("slow"))
    live.config.write_text(live.config.read_text().replace("[http]\n", f"[http]\nread_timeout = {TIMEOUT}\n"))
    live.start()
    try:
        yield live
    finally:
        live.stop()


def connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def closed_after(sock: socket.socket, start: float) -> float:
    """Seconds from ``start`` until the server closed ``sock`` (reading anything it sends)."""
    while True:
        try:
            if not sock.recv(65536):
                break
        except ConnectionResetError:
            break
    return time.monotonic() - start


def stored(server: LiveServer) -> list:
    resp = requests.get(server.url + "/dicom-web/instances", timeout=10)
    assert resp.status_code == 200
    return resp.json()


def staged(server: LiveServer) -> list:
    return list((server.root / "files" / "tmp").glob("*"))


def stow_head(length: int, ctype: str) -> bytes:
    return (f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {length}\r\nAccept: application/dicom+json\r\n"
            "Connection: close\r\n\r\n").encode()


def test_half_sent_headers_are_cut(server: LiveServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Ty")
        start = time.monotonic()
        waited = closed_after(sock, start)
    assert TIMEOUT - 0.5 <= waited <= TIMEOUT * 3, waited


def test_headers_trickling_in_are_cut_once_they_stop(server: LiveServer) -> None:
    with connect(server) as sock:
        for piece in (b"GET /dicom-web/stu", b"dies HTTP/1.1\r\n", b"Host: x\r\n"):
            sock.sendall(piece)
            time.sleep(TIMEOUT / 2)  # each within the timeout: the clock restarts
        start = time.monotonic()
        waited = closed_after(sock, start)
    assert waited <= TIMEOUT * 3, waited


def test_body_a_byte_every_three_seconds_is_cut_and_nothing_stored(server: LiveServer) -> None:
    body, ctype = multipart([synth.instance()])
    with connect(server) as sock:
        sock.sendall(stow_head(len(body), ctype) + body[:300])
        start = time.monotonic()
        cut = False
        for i in range(300, 310):
            time.sleep(TIMEOUT * 1.5)
            try:
                sock.sendall(body[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            sock.settimeout(0.05)
            try:
                if not sock.recv(65536):
                    cut = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:
                cut = True
                break
            finally:
                sock.settimeout(30)
        assert cut, "the server kept a stalled upload open"
        assert time.monotonic() - start <= TIMEOUT * 4
    assert stored(server) == []
    assert "unhandled error" not in (server.root / "server.log").read_text()
    deadline = time.monotonic() + 5
    while staged(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert staged(server) == []


def test_slow_but_steady_upload_succeeds(server: LiveServer) -> None:
    data = synth.instance()
    body, ctype = multipart([data])
    pieces = 10
    step = -(-len(body) // pieces)
    with connect(server) as sock:
        sock.sendall(stow_head(len(body), ctype))
        start = time.monotonic()
        for i in range(0, len(body), step):
            time.sleep(TIMEOUT / 4)
            sock.sendall(body[i:i + step])
        assert time.monotonic() - start > TIMEOUT * 2  # longer in total than the timeout
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert len(stored(server)) == 1


def test_idle_keep_alive_connection_is_not_a_slow_client(server: LiveServer) -> None:
    """Between requests aiohttp's keep-alive timeout applies, not read_timeout."""
    with connect(server) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            time.sleep(TIMEOUT * 1.5)


def test_read_timeout_is_validated() -> None:
    from archive.config import ConfigError, from_dict
    assert from_dict({"http": {"read_timeout": 0}}).http.read_timeout == 0
    assert from_dict({"http": {"read_timeout": 2.5}}).http.read_timeout == 2.5
    for bad in (-1, "60", float("nan"), float("inf")):
        with pytest.raises(ConfigError):
            from_dict({"http": {"read_timeout": bad}})
