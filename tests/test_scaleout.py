"""Scale-out (issue 8): two server hosts on different ports sharing one PostgreSQL index and one
S3 bucket. STOW-RS goes to both at once, into the same studies and series, while QIDO-RS and
WADO-RS read from the other; at the end every instance is there exactly once, byte-identical from
either host, with one object per instance in the bucket."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests import pg, synth
from tests.conftest import LiveServer, multipart
from tests.s3server import MotoS3, delete_bucket, moto_s3  # noqa: F401 - the fixture

STUDIES = 3
SERIES_PER_STUDY = 2
PER_SENDER = 12  # instances each sender thread stores
SENDERS = 4  # threads per host
ANY_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _host(root: Path, database_url: str, s3: MotoS3, bucket: str, workers: int) -> LiveServer:
    root.mkdir()
    server = LiveServer(root, extra_toml="[ingest]\nparse_processes = 0\n[render]\ncodec_processes = 0\n"
                                         + s3.store_toml(bucket))
    text = server.config.read_text(encoding="utf-8")
    text = text.replace(f'url = "{pg.database_url(root)}"', f'url = "{database_url}"')
    text = text.replace("[storage]\n", '[storage]\nbackend = "s3"\n', 1)
    text = text.replace(f"port = {server.port}\n", f"port = {server.port}\nworkers = {workers}\n", 1)
    server.config.write_text(text, encoding="utf-8")
    return server


@pytest.fixture
def hosts(tmp_path: Path, postgres: pg.Cluster, moto_s3: MotoS3  # noqa: F811
          ) -> Iterator[tuple[LiveServer, LiveServer, str]]:
    database_url = postgres.url(postgres.new_database())
    bucket = moto_s3.new_bucket()
    a = _host(tmp_path / "a", database_url, moto_s3, bucket, workers=2)
    b = _host(tmp_path / "b", database_url, moto_s3, bucket, workers=1)
    try:
        a.start(timeout=40)
        b.start(timeout=40)
        yield a, b, bucket
    finally:
        a.stop()
        b.stop()
        delete_bucket(moto_s3.client(), bucket)


def _stow(server: LiveServer, body_ctype: tuple[bytes, str]) -> requests.Response:
    body, ctype = body_ctype
    return requests.post(f"{server.url}/dicom-web/studies", data=body, timeout=60,
                         headers={"Content-Type": ctype, "Connection": "close"})


def test_two_hosts_share_one_index_and_one_bucket(hosts: tuple[LiveServer, LiveServer, str],
                                                  moto_s3: MotoS3) -> None:  # noqa: F811
    a, b, bucket = hosts
    studies = [(synth.uid(), [synth.uid() for _ in range(SERIES_PER_STUDY)]) for _ in range(STUDIES)]
    sent: dict[str, bytes] = {}
    lock = threading.Lock()
    done = threading.Event()
    problems: list[str] = []

    def sender(server: LiveServer, number: int) -> None:
        for i in range(PER_SENDER):
            study, series = studies[i % STUDIES]
            ds = synth.dataset(study=study, series=series[(number + i) % SERIES_PER_STUDY],
                               patient_id=f"SCALE-{i % STUDIES}", instance_number=number * 100 + i,
                               fill=number * 100 + i)
            data = synth.encode(ds)
            with lock:
                sent[str(ds.SOPInstanceUID)] = data
            resp = _stow(server, multipart([data]))
            if resp.status_code != 200:
                problems.append(f"STOW to {server.url}: {resp.status_code} {resp.text[:200]}")

    def reader(server: LiveServer) -> int:
        """QIDO-RS and WADO-RS on one host while the other stores: whatever it finds is whole."""
        checked = 0
        while not done.is_set():
            found = requests.get(f"{server.url}/dicom-web/instances", params={"limit": "1000"}, timeout=30)
            assert found.status_code == 200, found.text
            for item in found.json()[:5]:
                sop = item["00080018"]["Value"][0]
                study = item["0020000D"]["Value"][0]
                series = item["0020000E"]["Value"][0]
                got = requests.get(f"{server.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}",
                                   headers={"Accept": ANY_DICOM}, timeout=30)
                assert got.status_code == 200, got.text[:300]
                with lock:
                    expected = sent.get(sop)
                assert expected is not None and expected in got.content, f"{sop} differs on {server.url}"
                checked += 1
            time.sleep(0.05)
        return checked

    with ThreadPoolExecutor(2 * SENDERS + 2) as pool:
        readers = [pool.submit(reader, b), pool.submit(reader, a)]
        senders = [pool.submit(sender, host, n) for n, host in
                   enumerate([a] * SENDERS + [b] * SENDERS)]
        for f in senders:
            f.result()
        done.set()
        read_checks = [r.result() for r in readers]
    assert not problems, problems
    assert all(n > 0 for n in read_checks), read_checks  # both readers saw instances while storing

    total = 2 * SENDERS * PER_SENDER
    assert len(sent) == total
    for server in (a, b):
        found = requests.get(f"{server.url}/dicom-web/instances", params={"limit": "1000"}, timeout=30).json()
        sops = [d["00080018"]["Value"][0] for d in found]
        assert sorted(sops) == sorted(sent), "an instance is missing or doubled"
        rows = requests.get(f"{server.url}/dicom-web/studies", timeout=30,
                            params={"includefield": "00201208,00201206"}).json()
        assert len(rows) == STUDIES  # one row per study, not one per host that created it
        assert sum(r["00201208"]["Value"][0] for r in rows) == total
        assert all(r["00201206"]["Value"][0] == SERIES_PER_STUDY for r in rows)
    # Every instance again, from the host it was not necessarily sent to.
    for sop, data in list(sent.items())[::7]:
        meta = requests.get(f"{a.url}/dicom-web/instances", params={"SOPInstanceUID": sop}, timeout=30).json()
        study, series = meta[0]["0020000D"]["Value"][0], meta[0]["0020000E"]["Value"][0]
        got = requests.get(f"{a.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}",
                           headers={"Accept": ANY_DICOM}, timeout=30)
        assert data in got.content
    # One object per instance in the bucket: no orphan from a lost race, none missing.
    client = moto_s3.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", []) if o["Key"].endswith(".dcm")]
    assert len(keys) == total
    assert {k.rsplit("/", 1)[-1].rsplit(".", 2)[0] for k in keys} == {*sent}  # named by SOP Instance UID
    # A duplicate sent to the other host is refused and changes nothing.
    sop, data = next(iter(sent.items()))
    again = _stow(b, multipart([data]))
    assert again.status_code == 200, again.text  # the same data set again: accepted, a duplicate
    after = requests.get(f"{b.url}/dicom-web/instances", params={"limit": "1000"}, timeout=30).json()
    assert len(after) == total
    keys_after = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                  for o in page.get("Contents", []) if o["Key"].endswith(".dcm")]
    assert sorted(keys_after) == sorted(keys)  # and no second object for it
