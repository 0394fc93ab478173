"""A gigabyte of garbage sent to STOW-RS (issue 5): inside a valid multipart envelope it is one
failed part (409 with a failure entry); with no boundary anywhere it is a 400 as soon as the
preamble passes its limit. Either way the server's memory stays flat and nothing is left in
storage's staging folder."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import psutil
import pytest
import requests

from archive.ingest import CANNOT_UNDERSTAND
from tests.conftest import LiveServer
from tests.test_large_upload import _PeakRss

GIB = 1 << 30
BLOCK = os.urandom(1 << 20)  # 1 MiB of random bytes, sent 1024 times


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("garbage"))
    live.start()
    try:
        yield live
    finally:
        live.stop()


def garbage() -> Iterator[bytes]:
    for _ in range(GIB // len(BLOCK)):
        yield BLOCK


def post_streaming(server: LiveServer, ctype: str, chunks: Iterator[bytes], length: int) -> bytes:
    """POST the body from a sender thread while reading the answer (which may come early);
    returns the raw response."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=120)
    head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {length}\r\nAccept: application/dicom+json\r\nConnection: close\r\n\r\n")

    def send() -> None:
        try:
            sock.sendall(head.encode())
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered early and closed: fine

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    sender.join(120)
    sock.close()
    return answer


def measure(server: LiveServer, ctype: str, chunks: Iterator[bytes], length: int) -> tuple[bytes, float]:
    requests.get(server.url + "/healthz", timeout=10)
    before = psutil.Process(server.proc.pid).memory_info().rss
    sampler = _PeakRss(server.proc.pid)
    sampler.start()
    start = time.monotonic()
    answer = post_streaming(server, ctype, chunks, length)
    print(f"answered in {time.monotonic() - start:.1f} s")
    sampler.done.set()
    sampler.join()
    growth_mb = (sampler.peak - before) / 2**20
    print(f"server RSS peak growth: {growth_mb:.1f} MB")
    assert growth_mb < 50, f"server RSS peaked {growth_mb:.0f} MB above its idle size"
    return answer, growth_mb


def settled_staging(server: LiveServer) -> list:
    tmp = server.root / "files" / "tmp"
    deadline = time.monotonic() + 10
    while list(tmp.glob("*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    return list(tmp.glob("*"))


def test_gigabyte_of_garbage_in_a_part_is_a_failed_part(server: LiveServer) -> None:
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        yield from garbage()
        yield tail

    answer, _ = measure(server, f'multipart/related; type="application/dicom"; boundary={boundary}',
                        body(), len(head) + GIB + len(tail))
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 409"), answer[:300]
    payload = json.loads(rest.partition(b"\r\n\r\n")[2])
    failed = payload["00081198"]["Value"]
    assert len(failed) == 1 and failed[0]["00081197"]["Value"] == [CANNOT_UNDERSTAND]
    assert settled_staging(server) == []
    assert requests.get(server.url + "/dicom-web/instances", timeout=10).json() == []


def test_gigabyte_without_a_boundary_is_400(server: LiveServer) -> None:
    boundary = uuid.uuid4().hex
    answer, _ = measure(server, f'multipart/related; type="application/dicom"; boundary={boundary}',
                        garbage(), GIB)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"preamble" in answer
    assert settled_staging(server) == []
    # The server is fine afterwards.
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
