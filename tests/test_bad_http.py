"""Bad HTTP input (issue 5): broken multipart framing, wrong media types, absurd headers and query
parameters get a clear 4xx, never a 5xx; the server keeps serving."""

from __future__ import annotations

import asyncio

import pytest

from tests import synth
from tests.conftest import multipart


async def _raw(client, request: bytes) -> bytes:
    """Send raw bytes to the test server; the whole answer (the server closes or 5 s pass)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        chunks = []
        try:
            while data := await asyncio.wait_for(reader.read(65536), 5):
                chunks.append(data)
        except TimeoutError:
            pass
        return b"".join(chunks)
    finally:
        writer.close()


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def _alive(client) -> None:
    assert (await client.get("/healthz")).status == 200


@pytest.mark.parametrize("ctype, want", [
    ("multipart/related; type=\"application/dicom\"", 400),  # no boundary
    ("multipart/related; type=\"application/dicom\"; boundary=", 400),
    ("multipart/related; type=\"application/dicom\"; boundary=" + "b" * 300, 400),
    ("application/dicom", 415),
    ("text/plain", 415),
    ("", 415),
    ("multipart/related; type=\"image/jpeg\"; boundary=x", 415),
    ("multipart/related; type=\"application/dicom\"; boundary=\"unterminated", 400),
    (";;;===", 415),
])
async def test_stow_content_types(client, ctype: str, want: int) -> None:
    body, _ = multipart([synth.instance()])
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == want, await resp.text()
    await _alive(client)


@pytest.mark.parametrize("what", ["wrong boundary", "no closing delimiter", "cut in a part",
                                  "cut in part headers", "garbage", "empty"])
async def test_stow_broken_bodies(client, what: str) -> None:
    body, ctype = multipart([synth.instance()])
    boundary = ctype.rsplit("=", 1)[1]
    broken = {
        "wrong boundary": body.replace(boundary.encode(), b"x" * len(boundary)),
        "no closing delimiter": body[:body.rindex(b"\r\n--")],
        "cut in a part": body[:len(body) // 2],
        "cut in part headers": body[:len(boundary) + 10],
        "garbage": bytes(range(256)) * 64,
        "empty": b"",
    }[what]
    resp = await client.post("/dicom-web/studies", data=broken, headers={"Content-Type": ctype})
    assert resp.status == 400, await resp.text()
    await _alive(client)
    assert (await client.get("/dicom-web/studies")).status == 200


@pytest.mark.parametrize("query", [
    "limit=-1", "offset=-5", "limit=99999999999999999999", "offset=1e3", "limit=",
    "NoSuchKey=1", "PatientName.FamilyName=DOE", "StudyDate=2020-01-01",
    "StudyDate=20200101-20191231-", "fuzzymatching=maybe", "includefield=Nope",
    "includefield=ZZZZZZZZ", "StudyInstanceUID=../..", "StudyInstanceUID=1.2.abc",
])
async def test_qido_bad_parameters_are_400(client, query: str) -> None:
    resp = await client.get(f"/dicom-web/studies?{query}")
    assert resp.status == 400, (query, resp.status, await resp.text())
    assert await resp.text(), "a 400 names what is wrong"


@pytest.mark.parametrize("query", [
    "00100010=",  # empty value: return the attribute (PS3.4 C.2.2.2.3)
    "StudyDate=20201301",  # syntactically a DA (8 digits); no date matches it
])
async def test_qido_odd_but_valid_parameters(client, query: str) -> None:
    resp = await client.get(f"/dicom-web/studies?{query}")
    assert resp.status == 200, (query, resp.status, await resp.text())


@pytest.mark.parametrize("value", ["' OR 1=1 --", "%", "_", "\\", "*%_*", "DOE'; DROP TABLE studies; --",
                                   "[abc]", "A" * 5000, "\u00e9\u4e2d", "\x00"])
async def test_qido_metacharacters_match_literally(client, value: str) -> None:
    body, ctype = multipart([synth.instance(patient_name="Real^Name", patient_id="PID-1")])
    assert (await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})).status == 200
    for key in ("PatientName", "PatientID", "AccessionNumber"):
        resp = await client.get("/dicom-web/studies", params={key: value})
        assert resp.status in (200, 400), (key, value, resp.status)
        if resp.status == 200:
            assert await resp.json() == [], (key, value)  # nothing matches; nothing leaked
    assert len(await (await client.get("/dicom-web/studies")).json()) == 1  # still there


@pytest.mark.parametrize("accept", ["image/png", "application/x-nonsense", "*/*;q=abc",
                                    ",".join(["text/html;q=0.1"] * 500), "multipart/related; type=",
                                    "\u00e9"])
async def test_qido_absurd_accept(client, accept: str) -> None:
    resp = await client.get("/dicom-web/studies", headers={"Accept": accept})
    assert resp.status in (200, 400, 406), resp.status
    await _alive(client)


async def test_ten_kilobyte_header_line_is_refused(client) -> None:
    request = (b"GET /dicom-web/studies HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 10_240
               + b"\r\nConnection: close\r\n\r\n")
    answer = await _raw(client, request)
    assert _status(answer) in (400, 431), answer[:200]
    await _alive(client)


async def test_body_shorter_than_its_content_length(client) -> None:
    """The client sends half the body it announced, then closes its side: no response is owed,
    the server stays up and keeps nothing of it."""
    body, ctype = multipart([synth.instance()])
    head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(head + body[:len(body) // 2])
    await writer.drain()
    writer.write_eof()
    try:
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer == b"" or _status(answer) == 400, answer[:200]
    await _alive(client)
    assert await (await client.get("/dicom-web/studies")).json() == []
