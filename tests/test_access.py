"""Access control and release states (issue 7): roles from bearer tokens and calling AE titles,
and the leak test — no sequestered or quarantined UID, PatientID or pixel byte reaches anyone who
may not see it, through any endpoint or DIMSE service; a hidden UID answers as one that does not
exist."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from pydicom import dcmread

from archive.auth import new_token, token_hash
from tests import synth
from tests.conftest import LiveServer, free_port, multipart
from tests.dcmtk import tool
from tests.test_dimse import AET, StoreScp, run

ROLES = ("contributor", "evaluator", "admin")
FILL = {"open": 0x1357, "sequestered": 0x5A5A, "quarantined": 0xA5C3}


@dataclass
class Patient:
    state: str
    patient_id: str
    study: str = field(default_factory=synth.uid)
    series: str = field(default_factory=synth.uid)
    sops: list[str] = field(default_factory=lambda: [synth.uid(), synth.uid()])

    @property
    def secrets(self) -> list[bytes]:
        """What must never reach a caller who may not see this patient."""
        pixels = FILL[self.state].to_bytes(2, "little") * 32
        return [s.encode() for s in (self.patient_id, self.study, self.series, *self.sops)] + [pixels]


@dataclass
class Commons:
    server: LiveServer
    tokens: dict[str, str]  # role -> bearer token
    patients: dict[str, Patient]  # state -> patient
    work: Path
    dest_port: int

    def headers(self, role: str | None, **extra: str) -> dict[str, str]:
        h = dict(extra)
        if role is not None and role != "anonymous":
            h["Authorization"] = f"Bearer {self.tokens[role]}"
        return h


@pytest.fixture(scope="module")
def commons(tmp_path_factory: pytest.TempPathFactory, db_backend: str) -> Iterator[Commons]:
    work = tmp_path_factory.mktemp("access")
    tokens = {role: new_token() for role in ROLES}
    toml = "".join(f'[[auth.tokens]]\nname = "{role}-token"\nrole = "{role}"\nsha256 = "{token_hash(t)}"\n'
                   for role, t in tokens.items())
    toml += "".join(f'[[dimse.ae]]\nae_title = "{role.upper()[:16]}"\nrole = "{role}"\n' for role in ROLES)
    dest_port = free_port()  # the C-MOVE destination (storescp, started by the test)
    toml += f'[dimse.peers.dest]\nae_title = "DEST"\nhost = "127.0.0.1"\nport = {dest_port}\n'
    root = work / "archive"
    root.mkdir()
    server = LiveServer(root, toml, dimse=True)
    server.start()
    patients = {state: Patient(state, f"{state.upper()}-PID-{synth.uid()[-6:]}") for state in FILL}
    try:
        c = Commons(server, tokens, patients, work, dest_port)
        for p in patients.values():
            parts = []
            for k, sop in enumerate(p.sops):
                ds = synth.dataset(study=p.study, series=p.series, sop=sop, patient_id=p.patient_id,
                                   patient_name=f"{p.state}^secret", instance_number=k + 1,
                                   fill=FILL[p.state], rows=32, columns=32)
                ds.StudyDescription = f"{p.state.upper()} ZQXJ DESCRIPTION"  # unmapped: in the report
                parts.append(synth.encode(ds))
            body, ctype = multipart(parts)
            resp = requests.post(f"{server.url}/dicom-web/studies", data=body, timeout=30,
                                 headers=c.headers("contributor", **{"Content-Type": ctype}))
            assert resp.status_code == 200, resp.text
            if p.state != "open":
                resp = requests.post(f"{server.url}/api/release", timeout=30, headers=c.headers("admin"),
                                     json={"patient_id": p.patient_id, "state": p.state, "reason": "test"})
                assert resp.status_code == 200 and resp.json()["changed"], resp.text
        yield c
    finally:
        server.stop()


def _http_requests(c: Commons, p: Patient) -> list[tuple[str, str, dict[str, str]]]:
    """(path, what it is, extra headers) of every read endpoint, aimed at ``p``'s UIDs."""
    s, se, i = p.study, p.series, p.sops[0]
    inst = f"/dicom-web/studies/{s}/series/{se}/instances/{i}"
    dicom = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    octets = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
    return [
        (f"/dicom-web/studies/{s}", "retrieve study", dicom),
        (f"/dicom-web/studies/{s}/series/{se}", "retrieve series", dicom),
        (inst, "retrieve instance", dicom),
        (f"/dicom-web/studies/{s}", "zip", {"Accept": "application/zip"}),
        (f"/dicom-web/studies/{s}/metadata", "study metadata", {}),
        (f"/dicom-web/studies/{s}/series/{se}/metadata", "series metadata", {}),
        (inst + "/metadata", "instance metadata", {}),
        (inst + "/bulk/7FE00010", "bulk pixel data", {}),
        (inst + "/frames/1", "frame", octets),
        (inst + "/rendered", "rendered", {"Accept": "image/png"}),
        (f"/dicom-web/studies/{s}/thumbnail", "thumbnail", {"Accept": "image/jpeg"}),
        (f"/dicom-web/studies/{s}/series", "QIDO series of the study", {}),
        (f"/dicom-web/studies/{s}/series/{se}/instances", "QIDO instances of the series", {}),
    ]


_SEARCHES = ["/dicom-web/studies?includefield=all", "/dicom-web/series?includefield=all",
             "/dicom-web/instances?includefield=all", "/dicom-web/studies?PatientID=*PID*",
             "/dicom-web/studies?StudyDescription=*ZQXJ*", "/api/harmonization/unmapped"]


def _visible(role: str) -> set[str]:
    return {"evaluator": {"open", "sequestered"}, "admin": set(FILL)}.get(role, {"open"})


def _leaks(body: bytes, c: Commons, role: str) -> list[str]:
    return [f"{p.state} {secret[:40]!r}" for p in c.patients.values() if p.state not in _visible(role)
            for secret in p.secrets if secret in body]


@pytest.mark.databases
def test_what_an_admin_read_is_not_served_to_a_guest_from_a_cache(commons: Commons) -> None:
    """Frames and rendered images keep per-process caches of what they read; an admin reading
    every patient's first, then a guest asking for the same, gets 404 for the hidden ones (the
    access check comes before any cache)."""
    c = commons
    reads = [(path, what, extra) for p in c.patients.values() for path, what, extra in _http_requests(c, p)
             if what in ("frame", "rendered", "thumbnail")]
    for path, what, extra in reads:
        resp = requests.get(c.server.url + path, headers=c.headers("admin", **extra), timeout=30)
        assert resp.status_code == 200, (what, resp.status_code)
    for p in c.patients.values():
        for path, what, extra in _http_requests(c, p):
            if what not in ("frame", "rendered", "thumbnail"):
                continue
            resp = requests.get(c.server.url + path, headers=c.headers("anonymous", **extra), timeout=30)
            assert resp.status_code == (200 if p.state == "open" else 404), (p.state, what)
            assert _leaks(resp.content, c, "anonymous") == [], (p.state, what)


@pytest.mark.parametrize("role", ["anonymous", "contributor", "evaluator", "admin"])
@pytest.mark.databases
def test_http_shows_each_role_exactly_what_it_may_see(commons: Commons, role: str) -> None:
    c = commons
    ghost = Patient("open", "NOBODY")  # UIDs that were never stored
    for path in _SEARCHES:
        resp = requests.get(c.server.url + path, headers=c.headers(role), timeout=30)
        assert resp.status_code == 200, (path, resp.status_code, resp.text[:200])
        assert _leaks(resp.content + str(resp.headers).encode(), c, role) == [], path
        for p in c.patients.values():  # what it may see is there
            if p.state in _visible(role) and "harmonization" not in path:
                assert p.study.encode() in resp.content, (role, path, p.state)
    for p in c.patients.values():
        for (path, what, extra), (ghost_path, _, _) in zip(_http_requests(c, p), _http_requests(c, ghost),
                                                           strict=True):
            resp = requests.get(c.server.url + path, headers=c.headers(role, **extra), timeout=30)
            if p.state in _visible(role):
                assert resp.status_code == 200, (role, p.state, what, resp.status_code, resp.text[:200])
                continue
            assert _leaks(resp.content + str(resp.headers).encode(), c, role) == [], (role, what)
            # A hidden UID answers exactly as one that does not exist.
            absent = requests.get(c.server.url + ghost_path, headers=c.headers(role, **extra), timeout=30)
            assert (resp.status_code, resp.text) == (absent.status_code, absent.text), (role, what)
            assert resp.status_code == 404 or what.startswith("QIDO") and resp.status_code == 200, what


@pytest.mark.parametrize("role", ["anonymous", "contributor", "evaluator", "admin"])
@pytest.mark.databases
def test_cohorts_show_each_role_exactly_what_it_may_see(commons: Commons, role: str) -> None:
    c = commons
    url = c.server.url
    resp = requests.post(f"{url}/api/cohorts/query", json={"filters": {}}, headers=c.headers(role),
                         timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert _leaks(resp.content, c, role) == []
    visible = [p for p in c.patients.values() if p.state in _visible(role)]
    privileged = role in ("evaluator", "admin")
    counts = body["counts"]
    if privileged:  # exact counts, every visible study listed
        assert (counts["patients"], counts["instances"]) == (len(visible), 2 * len(visible))
        assert sorted(s["StudyInstanceUID"] for s in body["studies"]) == sorted(p.study for p in visible)
        assert body["withheld"] is False
    else:  # fewer than 10: suppressed for the public, facets too, and no rows to count
        assert counts["patients"] == counts["studies"] == "<10"
        assert counts["series"] is counts["instances"] is counts["bytes"] is None  # would tell it
        assert all(e["studies"] == "<10" for entries in body["facets"].values() for e in entries)
        assert body["studies"] == [] and body["more"] is False and body["withheld"] is True
    saved = requests.post(f"{url}/api/cohorts", json={"name": f"all-{role}", "filters": {}},
                          headers=c.headers(role), timeout=30)
    assert saved.status_code == 201, saved.text
    links = saved.json()["links"]
    for link, extra in ((links["manifest"], {}), (links["manifest_csv"], {}), (links["zip"], {})):
        got = requests.get(link, headers=c.headers(role, **extra), timeout=30)
        assert _leaks(got.content, c, role) == [], link
        if not privileged:  # a small cohort's rows are listed to evaluators and admins only
            assert got.status_code == 403, (link, got.text[:200])
            continue
        assert got.status_code == 200, (link, got.text[:200])
        for p in visible:
            assert p.study.encode() in got.content or p.sops[0].encode() in got.content, (link, p.state)


def _find(c: Commons, aet: str, cwd: Path, level: str) -> bytes:
    """Every C-FIND response at ``level`` (study root), as bytes of the written data sets."""
    keys = {"QueryRetrieveLevel": level, "PatientID": "", "PatientName": "", "StudyInstanceUID": "",
            "StudyDescription": ""}
    if level in ("SERIES", "IMAGE"):
        keys["SeriesInstanceUID"] = ""
    if level == "IMAGE":
        keys["SOPInstanceUID"] = ""
    cwd.mkdir(parents=True)
    args = [tool("findscu"), "-v", "-S", "-X", "-aet", aet, "-aec", AET]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}" if v else k]
    code, log = run(args + ["127.0.0.1", str(c.server.dimse_port)], cwd=cwd)
    assert code == 0, log[-2000:]
    return b"".join(p.read_bytes() for p in sorted(cwd.glob("rsp*.dcm"))) + log.encode()


def _get(c: Commons, aet: str, out: Path, study: str) -> tuple[bytes, list[str]]:
    out.mkdir(parents=True)
    code, log = run([tool("getscu"), "-v", "-S", "-aet", aet, "-aec", AET, "-od", str(out),
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                     "127.0.0.1", str(c.server.dimse_port)])
    files = sorted(out.glob("*"))
    sops = [str(dcmread(f).SOPInstanceUID) for f in files]
    return b"".join(f.read_bytes() for f in files) + log.encode(), sops


@pytest.mark.parametrize("role", ["anonymous", "contributor", "evaluator", "admin"])
@pytest.mark.databases
def test_dimse_shows_each_calling_ae_exactly_what_it_may_see(commons: Commons, role: str,
                                                             tmp_path: Path) -> None:
    c = commons
    aet = "SOMEONE" if role == "anonymous" else role.upper()
    for level in ("STUDY", "SERIES", "IMAGE"):
        found = _find(c, aet, tmp_path / f"find-{level}", level)
        assert _leaks(found, c, role) == [], (role, level)
        for p in c.patients.values():
            assert (p.study.encode() in found) == (p.state in _visible(role)), (role, level, p.state)
    for p in c.patients.values():
        got, sops = _get(c, aet, tmp_path / f"get-{p.state}", p.study)
        if p.state in _visible(role):
            assert sorted(sops) == sorted(p.sops), (role, p.state)
        else:
            assert sops == [] and _leaks(got, c, role) == [], (role, p.state)
    # C-MOVE of every study to the destination: only the visible ones arrive.
    scp = StoreScp(c.dest_port, tmp_path / "moved")
    try:
        for p in c.patients.values():
            code, log = run([tool("movescu"), "-S", "-aet", aet, "-aec", AET, "-aem", "DEST",
                             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={p.study}",
                             "127.0.0.1", str(c.server.dimse_port)])
            assert code == 0, log[-1000:]
        arrived = scp.received()
    finally:
        scp.stop()
    assert sorted(arrived) == sorted(sop for p in c.patients.values() if p.state in _visible(role)
                                     for sop in p.sops), role


@pytest.mark.databases
def test_writes_and_admin_operations_need_their_role(commons: Commons) -> None:
    c = commons
    url = c.server.url
    body, ctype = multipart([synth.instance(patient_id="WRITER")])
    for role, status in (("anonymous", 401), ("evaluator", 403)):
        resp = requests.post(f"{url}/dicom-web/studies", data=body, timeout=30,
                             headers=c.headers(role, **{"Content-Type": ctype}))
        assert resp.status_code == status, (role, resp.text)
    bad = "not-a-valid-token-" + new_token()
    resp = requests.post(f"{url}/dicom-web/studies", data=body, timeout=30,
                         headers={"Content-Type": ctype, "Authorization": f"Bearer {bad}"})
    assert resp.status_code == 401
    resp = requests.get(f"{url}/dicom-web/studies", headers={"Authorization": f"Bearer {bad}"}, timeout=30)
    assert resp.status_code == 401
    for path, method in (("/api/release", "post"), ("/api/release/log", "get"), ("/api/quarantine", "get"),
                         ("/api/clinical/report", "get"), ("/api/clinical", "post"),
                         (f"/api/quarantine/{c.patients['quarantined'].patient_id}", "delete")):
        for role, status in (("anonymous", 401), ("contributor", 403), ("evaluator", 403)):
            resp = getattr(requests, method)(url + path, headers=c.headers(role), timeout=30, json={})
            assert resp.status_code == status, (path, role, resp.status_code)
    log = requests.get(f"{url}/api/release/log", headers=c.headers("admin"), timeout=30).json()
    assert {(e["patient_id"], e["state"], e["actor"]) for e in log} == {
        (p.patient_id, p.state, "admin-token") for p in c.patients.values() if p.state != "open"}
    quarantined = requests.get(f"{url}/api/quarantine", headers=c.headers("admin"), timeout=30).json()
    assert [q["patient_id"] for q in quarantined] == [c.patients["quarantined"].patient_id]
    server_log = (c.server.root / "server.log").read_text()
    assert "authentication failed" in server_log and bad not in server_log
    assert not any(t in server_log for t in c.tokens.values())
    # C-STORE: only a contributor (or admin) AE may store.
    for aet, ok in (("SOMEONE", False), ("EVALUATOR", False), ("CONTRIBUTOR", True)):
        path = c.work / f"store-{aet}.dcm"
        path.write_bytes(synth.instance(patient_id="OPEN-WRITER"))
        code, out = run([tool("storescu"), "-v", "-aet", aet, "-aec", AET, "127.0.0.1",
                         str(c.server.dimse_port), str(path)])
        refused = "Status: 0x124" in out  # 0x0124 Refused: Not Authorized (PS3.4 Annex B)
        assert refused != ok and (ok == ("Store Response (Success)" in out)), (aet, out[-800:])


def test_single_user_mode_refuses_a_network_address(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[http]\nhost = "0.0.0.0"\n[dimse]\nenabled = false\n'
                      f'[storage]\npath = "{tmp_path / "files"}"\n', encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "archive", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "allow_unauthenticated" in proc.stderr and "0.0.0.0" in proc.stderr
    from archive import config as cfgmod
    from archive.cli import unauthenticated_exposure

    cfg = cfgmod.load(config)
    assert unauthenticated_exposure(cfg, "127.0.0.1") is None
    assert unauthenticated_exposure(cfg, "::1") is None
    assert unauthenticated_exposure(cfg, "192.168.1.10") is not None
    cfg.http.allow_unauthenticated = True
    assert unauthenticated_exposure(cfg, "0.0.0.0") is None


def test_token_new_prints_the_token_once_and_its_hash(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "archive", "token", "new", "--role", "evaluator",
                           "--name", "lab-7"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    token = proc.stderr.strip().rsplit(" ", 1)[-1]
    entry = tomllib.loads(proc.stdout)["auth"]["tokens"][0]
    assert entry == {"name": "lab-7", "role": "evaluator", "sha256": token_hash(token)}
    assert token not in proc.stdout
