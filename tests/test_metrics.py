"""``GET /metrics``: Prometheus text read back with prometheus-client's own parser; counters moved
by STOW-RS (in-process app), by C-STORE from dcmtk's storescu (a server process), access by role,
and one scrape adding up both workers of ``serve --workers 2``."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import tempfile
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from archive.app import create_app
from archive.auth import new_token, token_hash
from tests import synth
from tests.conftest import LiveServer, make_config, multipart
from tests.dcmtk import tool
from tests.test_dimse import AET, run
from tests.test_workers import _workers

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(("imaging_archive_" + name, frozenset(labels.items())), 0.0)


async def _scrape(client, headers: dict[str, str] | None = None) -> Samples:  # type: ignore[no-untyped-def]
    resp = await client.get("/metrics", headers=headers or {})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    return parse(await resp.text())


async def test_stow_and_requests_are_counted_by_route_template(aiohttp_client, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(make_config(tmp_path)))
    before = await _scrape(client)
    ds = synth.dataset()
    good = synth.encode(ds)
    body, ctype = multipart([good, b"not a DICOM file"])
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 202
    study = str(ds.StudyInstanceUID)
    assert (await client.get(f"/dicom-web/studies/{study}/metadata")).status == 200
    assert (await client.get("/no/such/path")).status == 404
    after = await _scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("instances_ingested_total", path="stow", outcome="stored") == 1
    assert delta("ingested_bytes_total", path="stow") == len(good)
    assert delta("ingest_failures_total", path="stow", reason="0xC000") == 1
    assert delta("http_requests_total", route="/dicom-web/studies", method="POST", status="202") == 1
    assert delta("http_requests_total", route="/dicom-web/studies/{study}/metadata", method="GET",
                 status="200") == 1
    assert delta("http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert delta("http_request_duration_seconds_count", route="/dicom-web/studies", method="POST") == 1
    # Route templates, never paths: no UID in any label.
    assert not [key for key in after if any(study in v for _, v in key[1])]
    # Send the same instance again: counted as found stored already, not as new bytes.
    body, ctype = multipart([good])
    assert (await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})).status == 200
    again = await _scrape(client)
    assert value(again, "instances_ingested_total", path="stow", outcome="identical") \
        - value(after, "instances_ingested_total", path="stow", outcome="identical") == 1
    assert value(again, "ingested_bytes_total", path="stow") == value(after, "ingested_bytes_total",
                                                                     path="stow")


async def test_metrics_need_an_admin_token_unless_single_user(aiohttp_client, tmp_path: Path) -> None:
    tokens = {role: new_token() for role in ("admin", "contributor")}
    cfg = make_config(tmp_path, auth={"tokens": [{"name": f"{r}-t", "role": r, "sha256": token_hash(t)}
                                                  for r, t in tokens.items()]})
    client = await aiohttp_client(create_app(cfg))
    assert (await client.get("/metrics")).status == 401
    contributor = {"Authorization": f"Bearer {tokens['contributor']}"}
    assert (await client.get("/metrics", headers=contributor)).status == 403
    await _scrape(client, {"Authorization": f"Bearer {tokens['admin']}"})
    single_user = await aiohttp_client(create_app(make_config(tmp_path / "single")))
    await _scrape(single_user)  # no tokens: the loopback single-user server answers everyone


def _scrape_live(server: LiveServer) -> Samples:
    # A new connection each time: with several workers, any of them may answer.
    resp = requests.get(f"{server.url}/metrics", headers={"Connection": "close"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return parse(resp.text)


def test_cstore_and_associations(tmp_path: Path) -> None:
    allow = '[dimse.allow]\nstore = ["PACS"]\nquery = ["PACS"]\nretrieve = ["PACS"]\n'
    server = LiveServer(tmp_path, allow, dimse=True)
    server.start()
    try:
        path = tmp_path / "ct.dcm"
        data = synth.instance()
        path.write_bytes(data)
        storescu = tool("storescu")
        code, log = run([storescu, "-aet", "PACS", "-aec", AET, "127.0.0.1", str(server.dimse_port),
                         str(path)])
        assert code == 0, log
        code, log = run([storescu, "-aet", "INTRUDER", "-aec", AET, "127.0.0.1", str(server.dimse_port),
                         str(path)])
        assert code != 0  # rejected at association time
        deadline = time.monotonic() + 10
        while value(samples := _scrape_live(server), "dimse_associations_active") != 0:
            assert time.monotonic() < deadline, "the association is still counted as open"
            time.sleep(0.1)
        assert value(samples, "instances_ingested_total", path="cstore", outcome="stored") == 1
        assert value(samples, "ingested_bytes_total", path="cstore") > 0
        assert value(samples, "dimse_associations_total", result="accepted") == 1
        assert value(samples, "dimse_associations_total", result="rejected") == 1
        assert value(samples, "instances_ingested_total", path="stow", outcome="stored") == 0
    finally:
        server.stop()


def _start(server: LiveServer) -> None:
    """Start a supervised server: its first health check may wait on the supervisor's socket for
    longer than LiveServer's one second while the workers start on a loaded machine."""
    try:
        server.start()
    except requests.Timeout:
        assert requests.get(f"{server.url}/healthz", timeout=60).status_code == 200


def test_two_workers_one_sum(tmp_path: Path) -> None:
    server = LiveServer(tmp_path)
    text = server.config.read_text().replace("[http]\n", "[http]\nworkers = 2\n", 1)
    server.config.write_text(text + "[ingest]\nparse_processes = 0\n[render]\ncodec_processes = 0\n")
    _start(server)
    try:
        deadline = time.monotonic() + 20
        while len(workers := _workers(server)) < 2:
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.1)
        n = 24
        for i in range(n):
            body, ctype = multipart([synth.instance(patient_id=f"MW-{i}")])
            resp = requests.post(f"{server.url}/dicom-web/studies", data=body, timeout=60,
                                 headers={"Content-Type": ctype, "Connection": "close"})
            assert resp.status_code == 200, resp.text
        # The folder the supervisor made: every worker writes its own files there.
        digest = hashlib.sha256(str((tmp_path / "files").resolve()).encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / f"imaging-archive-metrics-{digest}"
        pids = {int(m.group(1)) for f in folder.iterdir()
                if (m := re.fullmatch(r"counter_(\d+)\.db", f.name))}
        assert pids == {w.pid for w in workers}  # both served some requests
        for _ in range(6):  # whichever worker answers, the sum of both
            samples = _scrape_live(server)
            assert value(samples, "instances_ingested_total", path="stow", outcome="stored") == n
            assert value(samples, "http_requests_total", route="/dicom-web/studies", method="POST",
                         status="200") == n
        # A worker that dies is restarted; what it counted still counts.
        os.kill(workers[1].pid, signal.SIGKILL)
        while {w.pid for w in _workers(server)} & {workers[1].pid} or len(_workers(server)) < 2:
            assert time.monotonic() < deadline + 30, "the worker was not restarted"
            time.sleep(0.2)
        for _ in range(4):
            samples = _scrape_live(server)
            assert value(samples, "instances_ingested_total", path="stow", outcome="stored") == n
            assert value(samples, "http_requests_in_progress") >= 1  # this scrape, in a live worker
    finally:
        server.stop()
