"""The data explorer page (archive/ui, docs/explorer.md).

End to end: a real ``imaging-archive serve`` holds synthetic studies stored by STOW-RS from three
sites, MIDRC clinical data imported through POST /api/clinical, and some patients sequestered by
an admin; tests/e2e/explorer.mjs drives the page in headless Chromium as a guest and as an
evaluator (see its header). Every number the page showed is compared here with the API's answer
for the same filters and role: counts, each chart's bars, the studies listed; the manifests and
zip the page downloaded with the saved cohort's rows; and no sequestered study reaches the guest.

Needs node, the Debian ``chromium`` package and ``npm ci`` in tests/e2e (scripts/test installs
them): missing, the end-to-end tests are skipped, or fail under CI. Screenshots, downloads and
result.json go to artifacts/explorer/ (git-ignored).

Without a browser: the page's files and headers (Content-Security-Policy), ``[ui]`` settings,
and the opt-in facets the page asks for.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
import random
import re
import shutil
import subprocess
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from archive.app import create_app
from archive.auth import new_token, token_hash
from archive.config import ConfigError, from_dict
from archive.ui.routes import STATIC
from tests import synth
from tests.clinical_data import write_clinical_files
from tests.conftest import LiveServer, make_config, multipart
from tests.samples import IN_CI, REPO

E2E = REPO / "tests" / "e2e"
ARTIFACTS = REPO / "artifacts" / "explorer"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
DRIVER_TIMEOUT = 90  # seconds for one run of explorer.mjs
VIEWER = "https://viewer.example/viewer?StudyInstanceUIDs={StudyInstanceUID}"
MIN_CELL = 3  # [release] min_cell_count: small enough that most cells show, some are "<3"
PAGE = 20  # studies per page (archive/ui/static/js/main.js)
# The facets the page asks for (main.js FACETS); the charts it draws are these but release_state,
# which only a visitor who sees more than the open data gets.
FACETS = ["modality", "loinc", "body_region", "sex", "age_group", "race", "ethnicity", "covid19_positive",
          "study_year", "institution", "manufacturer", "release_state"]
GUEST_CHARTS = {f for f in FACETS if f != "release_state"}
N_PATIENTS = 40
N_STUDIES = 56
N_SEQUESTERED = 8
DESCRIPTIONS = [("CT", "CT CHEST WITHOUT CONTRAST"), ("CT", "CT ABDOMEN PELVIS W CONTRAST"),
                ("CT", "CT HEAD WO CONTRAST"), ("DX", "XR CHEST 1 VIEW AP"), ("CR", "XR PORT CHEST 1V"),
                ("DX", "XR CHEST PA AND LATERAL"), ("MR", "MRI BRAIN W WO CONTRAST"),
                ("CT", "ZQXW RESEARCH PROTOCOL 7")]  # the last one stays unmapped
SITES = [("Site A University Hospital", "GE MEDICAL SYSTEMS"), ("Site B Medical Center", "SIEMENS"),
         ("Site C Clinic", "Philips Medical Systems, Inc.")]
GUEST_FILTER = {"modality": ["CT"], "sex": ["Female"], "age": {"min": 18}}


# ---------------------------------------------------------------- the archive and its data

@dataclass
class Commons:
    server: LiveServer
    tokens: dict[str, str]  # role -> bearer token
    studies: dict[str, str]  # StudyInstanceUID -> PatientID
    sequestered: set[str]  # PatientIDs

    def headers(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}

    @property
    def hidden_studies(self) -> set[str]:
        return {s for s, p in self.studies.items() if p in self.sequestered}

    def query(self, role: str | None, filters: dict[str, Any], offset: int = 0,
              limit: int = PAGE) -> dict[str, Any]:
        """What POST /api/cohorts/query answers the page's question for ``role`` (None: guest)."""
        resp = requests.post(f"{self.server.url}/api/cohorts/query", headers=self.headers(role), timeout=30,
                             json={"filters": filters, "limit": limit, "offset": offset, "facets": FACETS})
        assert resp.status_code == 200, resp.text
        return resp.json()


def _studies(rng: random.Random) -> tuple[list[bytes], dict[str, str], set[str]]:
    """Synthetic instances: N_STUDIES studies of N_PATIENTS patients, each patient at one site;
    the files, each study's patient, and the patients with a CT study."""
    patients = [f"EXP-{i:03d}" for i in range(N_PATIENTS)]
    site_of = {p: SITES[i % len(SITES)] for i, p in enumerate(patients)}
    files: list[bytes] = []
    owner: dict[str, str] = {}
    with_ct: set[str] = set()
    for i in range(N_STUDIES):
        patient = patients[i] if i < N_PATIENTS else rng.choice(patients)
        modality, description = rng.choice(DESCRIPTIONS)
        institution, manufacturer = site_of[patient]
        study = synth.uid()
        owner[study] = patient
        if modality == "CT":
            with_ct.add(patient)
        date = f"{rng.randint(2019, 2023)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        for number in range(1, rng.choice([1, 1, 2]) + 1):
            series = synth.uid()
            for k in range(1, rng.choice([1, 2, 3]) + 1):
                ds = synth.dataset(study=study, series=series, patient_id=patient, modality=modality,
                                   patient_name=f"Explorer^{patient}", instance_number=k, rows=16, columns=16)
                ds.SeriesNumber = number
                ds.StudyDescription = description
                ds.StudyDate = date
                ds.InstitutionName = institution
                ds.Manufacturer = manufacturer
                files.append(synth.encode(ds))
    return files, owner, with_ct


def _missing_tools() -> str | None:
    """Why the browser test cannot run here (as tests/test_ohif.py checks, without the viewer)."""
    needs = [(shutil.which("node") is not None, "node is not installed"),
             (CHROMIUM.is_file(), f"no Chromium at {CHROMIUM} (Debian package chromium; or set CHROMIUM)"),
             ((E2E / "node_modules" / "playwright-core" / "package.json").is_file(),
              "playwright-core is not installed: run `npm ci` in tests/e2e")]
    return next((reason for present, reason in needs if not present), None)


@pytest.fixture(scope="module")
def commons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Commons]:
    root = tmp_path_factory.mktemp("explorer")
    tokens = {role: new_token() for role in ("evaluator", "admin")}
    toml = "".join(f'[[auth.tokens]]\nname = "{role}-token"\nrole = "{role}"\nsha256 = "{token_hash(t)}"\n'
                   for role, t in tokens.items())
    toml += f"[release]\nmin_cell_count = {MIN_CELL}\n[ui]\nviewer_url = \"{VIEWER}\"\n"
    server = LiveServer(root, toml)
    server.start()
    try:
        rng = random.Random(9)
        files, owner, with_ct = _studies(rng)
        c = Commons(server, tokens, owner, set())
        body, ctype = multipart(files)
        resp = requests.post(f"{server.url}/dicom-web/studies", data=body, timeout=60,
                             headers={**c.headers("admin"), "Content-Type": ctype})
        assert resp.status_code == 200, resp.text
        # MIDRC clinical data for most patients, through the clinical importer (POST /api/clinical).
        with_case = [(p, s) for s, p in owner.items() if not p.endswith("7")]
        truth = write_clinical_files(root / "clinical", with_case, seed=4)
        fields = [(node, path.read_bytes()) for node, path in truth.files.items()]
        resp = requests.post(f"{server.url}/api/clinical", timeout=60, headers=c.headers("admin"),
                             files=[("files", (f"{node}.tsv", data, "text/tab-separated-values"))
                                    for node, data in fields])
        assert resp.status_code == 200, resp.text
        # Sequester patients with a CT study, so that the filtered views differ too.
        for patient in rng.sample(sorted(with_ct), N_SEQUESTERED):
            resp = requests.post(f"{server.url}/api/release", headers=c.headers("admin"), timeout=30,
                                 json={"patient_id": patient, "state": "sequestered", "reason": "test"})
            assert resp.status_code == 200, resp.text
            c.sequestered.add(patient)
        yield c
    finally:
        server.stop()


@pytest.fixture(scope="module")
def run(commons: Commons) -> dict[str, Any]:
    """Runs tests/e2e/explorer.mjs once; its result.json."""
    reason = _missing_tools()
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true: {reason} (scripts/test installs it)")
        pytest.skip(reason)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    command = ["node", str(E2E / "explorer.mjs"), "--url", commons.server.url, "--out", str(ARTIFACTS),
               "--chromium", str(CHROMIUM)]
    env = {**os.environ, "EXPLORER_TOKEN": commons.tokens["evaluator"]}
    try:
        proc = subprocess.run(command, cwd=E2E, capture_output=True, text=True, timeout=DRIVER_TIMEOUT,
                              env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"explorer.mjs did not finish in {DRIVER_TIMEOUT} s: {exc.stderr!r}")
    (ARTIFACTS / "driver.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"explorer.mjs failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads((ARTIFACTS / "result.json").read_text())


# ---------------------------------------------------------------- comparing the page with the API

def shown(value: Any) -> str:
    """A count as the page writes it (archive/ui/static/js/format.js)."""
    if isinstance(value, int):
        return f"{value:,}"
    return value if isinstance(value, str) else "hidden"


def check_numbers(dom: dict[str, Any], counts: dict[str, Any], where: str) -> None:
    assert set(dom) == {"patients", "studies", "series", "instances", "bytes"}, where
    for key, value in counts.items():
        assert dom[key]["value"] == value, f"{where}: {key} {dom[key]} != {value!r}"
        if key != "bytes":
            assert dom[key]["text"] == shown(value), f"{where}: {key} {dom[key]} != {value!r}"
        elif value is None:
            assert dom[key]["text"] == "hidden", where


def check_charts(dom: dict[str, list[dict[str, Any]]], facets: dict[str, list[dict[str, Any]]],
                 charts: set[str], where: str, measure: str = "studies") -> None:
    """Every chart has one bar per facet entry of the API, in its order, with its count."""
    assert set(dom) == charts, where
    for facet in charts:
        want = [(e["value"], shown(e[measure])) for e in facets[facet]]
        got = [(bar["key"], bar["count"]) for bar in dom[facet]]
        assert got == want, f"{where}: chart {facet}"


def check_studies(dom: list[dict[str, Any]], api: list[dict[str, Any]], where: str, evaluator: bool) -> None:
    assert [s["uid"] for s in dom] == [s["StudyInstanceUID"] for s in api], where
    for row, study in zip(dom, api, strict=True):
        date = study["StudyDate"]
        assert row["date"] == f"{date[:4]}-{date[4:6]}-{date[6:]}", where
        assert row["procedure"] == (study["loinc_name"] or "Not harmonized"), where
        assert row["modality"] == ", ".join(study["ModalitiesInStudy"]), where
        assert (row["images"], row["series"]) == (shown(study["instances"]), shown(study["series"])), where
        assert row["viewer"] == VIEWER.replace("{StudyInstanceUID}", study["StudyInstanceUID"]), where
        assert row["thumb"] == "loaded", f"{where}: thumbnail of {row['uid']}: {row['thumb']}"
        assert row["state"] == study["release_state"]
        assert row["badge"] == (study["release_state"] if evaluator else None), where


def check_snapshot(c: Commons, snap: dict[str, Any], role: str | None, filters: dict[str, Any],
                   offset: int = 0) -> dict[str, Any]:
    where = f"{role or 'guest'} {filters} offset {offset}"
    assert snap["filters"] == filters and snap["offset"] == offset, where
    api = c.query(role, filters, offset)
    check_numbers(snap["summary"], c.query(role, {}, limit=0)["counts"], where + " (summary)")
    check_numbers(snap["cohort"], api["counts"], where)
    check_charts(snap["charts"], api["facets"], GUEST_CHARTS if role is None else set(FACETS), where)
    check_studies(snap["studies"], api["studies"], where, evaluator=role is not None)
    return api


def check_manifests(c: Commons, saved: dict[str, Any], role: str | None, filters: dict[str, Any]) -> set[str]:
    """The files the page downloaded are the saved cohort's manifest (JSON, CSV) and zip as the API
    gives them to ``role``, holding exactly the cohort's studies; the studies, returned."""
    cid = saved["id"]
    doc = json.loads(Path(saved["files"]["json"]["path"]).read_text())
    api = requests.get(f"{c.server.url}/api/cohorts/{cid}/manifest", headers=c.headers(role),
                       timeout=30).json()
    assert doc == api and doc["cohort"]["filters"] == filters
    studies = {row["StudyInstanceUID"] for row in doc["series"]}
    everything = c.query(role, filters, limit=1000)
    assert studies == {s["StudyInstanceUID"] for s in everything["studies"]}
    assert doc["totals"]["studies"] == len(studies) > 0
    table = list(csv.DictReader(io.StringIO(Path(saved["files"]["csv"]["path"]).read_text())))
    assert [(r["SeriesInstanceUID"], int(r["instances"])) for r in table] == \
        [(r["SeriesInstanceUID"], r["instances"]) for r in doc["series"]]
    with zipfile.ZipFile(saved["files"]["zip"]["path"]) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
    assert len(names) == doc["totals"]["instances"]
    assert {n.split("/")[0] for n in names} == studies
    assert saved["files"]["json"]["suggested"] == f"cohort-{cid}.json"
    return studies


# ---------------------------------------------------------------- end to end

def test_guest_sees_the_api_numbers(commons: Commons, run: dict[str, Any]) -> None:
    snaps = run["snapshots"]
    everything = check_snapshot(commons, snaps["guest"], None, {})
    assert snaps["guest"]["summaryTitle"] == "Open data" and snaps["guest"]["banner"] is None
    assert f"<{MIN_CELL}" in snaps["guest"]["suppressionNote"]
    # The charts counting patients instead of studies.
    check_charts(snaps["guest-patients"]["charts"], everything["facets"], GUEST_CHARTS, "patients",
                 "patients")
    # Small cells are suppressed for a guest, and the page shows them so.
    bars = [b for chart in snaps["guest"]["charts"].values() for b in chart]
    suppressed = [b for b in bars if b["count"] == f"<{MIN_CELL}"]
    assert suppressed, "no suppressed cell in the data: the check would be vacuous"
    check_snapshot(commons, snaps["guest-page-2"], None, {}, offset=PAGE)
    assert everything["counts"]["studies"] > PAGE  # there is a second page


def test_filters_update_counts_and_charts(commons: Commons, run: dict[str, Any]) -> None:
    snaps = run["snapshots"]
    ct = check_snapshot(commons, snaps["guest-ct"], None, {"modality": ["CT"]})
    narrow = check_snapshot(commons, snaps["guest-ct-female-adult"], None, GUEST_FILTER)
    everything = commons.query(None, {})
    # The filters really narrow the selection (the numbers changed, and are not empty).
    assert everything["counts"]["studies"] > ct["counts"]["studies"] != narrow["counts"]["studies"]
    assert narrow["studies"]
    # The chart bars of the selected values are shown pressed.
    pressed = {b["key"] for b in snaps["guest-ct-female-adult"]["charts"]["sex"] if b["pressed"] == "true"}
    assert pressed == {"Female"}
    assert {b["key"] for b in snaps["guest-ct"]["charts"]["modality"] if b["pressed"] == "true"} == {"CT"}


def test_downloads_are_the_saved_cohort(commons: Commons, run: dict[str, Any]) -> None:
    guest = check_manifests(commons, run["saved"]["guest"], None, GUEST_FILTER)
    assert not guest & commons.hidden_studies
    evaluator = check_manifests(commons, run["saved"]["evaluator"], "evaluator", {"modality": ["CT"]})
    assert evaluator & commons.hidden_studies  # every sequestered patient has a CT study


def test_guest_never_sees_sequestered_data(commons: Commons, run: dict[str, Any]) -> None:
    hidden = commons.hidden_studies
    hidden_patients = commons.sequestered
    assert hidden
    guest = [n for n in run["snapshots"] if not n.startswith("evaluator")]
    assert len(guest) == 7
    for name in guest:
        snap = run["snapshots"][name]
        assert snap["banner"] is None and "release_state" not in snap["charts"], name
        assert not any(uid in snap["html"] or patient in snap["html"]
                       for uid, patient in commons.studies.items() if patient in hidden_patients), name
        assert all(s["state"] == "open" for s in snap["studies"]), name
    check_snapshot(commons, run["snapshots"]["signed-out-ct"], None, {"modality": ["CT"]})
    # A guest's requests carry no token; none of the page's requests put one in a URL.
    tokens = commons.tokens.values()
    for r in run["requests"]:
        assert not any(t in r["url"] for t in tokens)
        if r["phase"] in ("guest", "signed-out"):
            assert r["authorization"] is None, r


def test_evaluator_sees_the_sequestered_side(commons: Commons, run: dict[str, Any]) -> None:
    snaps = run["snapshots"]
    api = check_snapshot(commons, snaps["evaluator"], "evaluator", {})
    guest = commons.query(None, {})
    assert api["counts"]["patients"] == guest["counts"]["patients"] + N_SEQUESTERED
    states = {b["key"]: b["count"] for b in snaps["evaluator"]["charts"]["release_state"]}
    assert set(states) == {"open", "sequestered"}
    assert "sequestered" in snaps["evaluator"]["banner"]
    assert "Not public" in snaps["evaluator"]["banner"] and "evaluator" in snaps["evaluator"]["who"]
    ct = check_snapshot(commons, snaps["evaluator-ct"], "evaluator", {"modality": ["CT"]})
    assert any(s["release_state"] == "sequestered" for s in ct["studies"])
    # Every request of the signed-in phase carried the evaluator's token, and was answered.
    signed_in = [r for r in run["requests"] if r["phase"] == "evaluator"]
    assert signed_in and any("/thumbnail" in r["path"] for r in signed_in)
    assert all(r["authorization"] == f"Bearer {commons.tokens['evaluator']}" for r in signed_in)
    assert all(r["status"] in (200, 201) for r in signed_in), [r for r in signed_in if r["status"] >= 300]


def test_refused_token_and_clean_page(run: dict[str, Any]) -> None:
    assert "did not accept" in run["refusedTokenMessage"]
    assert "guest" in run["snapshots"]["guest-after-refused"]["who"]
    refused = [r for r in run["requests"] if r["phase"] == "refused" and r["status"] == 401]
    assert refused == [r for r in run["requests"] if r["status"] == 401] and len(refused) == 1
    assert run["cspViolations"] == []
    assert run["pageErrors"] == []
    # The one console error allowed: Chromium's report of the refused token's 401.
    errors = [m for m in run["console"] if "401" not in m["text"]]
    assert errors == []
    assert run["seconds"] < 60
    # Responsive: at a phone's width nothing is wider than the window.
    assert run["narrow"]["scrollWidth"] <= run["narrow"]["width"], run["narrow"]


# ---------------------------------------------------------------- without a browser

async def test_page_files_and_headers(aiohttp_client, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(make_config(tmp_path, ui={"title": "Commons <Test>"})))
    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    html = await resp.text()
    assert "<title>Commons &lt;Test&gt;</title>" in html
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp and "unsafe" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # No inline script, style or event handler (the policy would block them).
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert not re.search(r"\son[a-z]+\s*=", html) and "style=" not in html
    for path in re.findall(r'(?:src|href)="(ui/[^"]+)"', html):
        asset = await client.get("/" + path)
        assert asset.status == 200, path
        assert (await client.get("/" + path, headers={"If-None-Match": asset.headers["ETag"]})).status == 304
    js = await client.get("/ui/js/main.js")
    assert js.content_type == "text/javascript"
    for path in ("/ui/index.html", "/ui/nothing.js", "/ui/../config.toml", "/ui/%2e%2e/routes.py"):
        assert (await client.get(path)).status == 404, path
    session = await (await client.get("/api/explorer/session")).json()
    assert session["viewer_url"] == "" and session["caller"]["role"] == "admin"  # single-user mode


async def test_ui_can_be_turned_off(aiohttp_client, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(make_config(tmp_path, ui={"enabled": False})))
    for path in ("/", "/ui/js/main.js", "/api/explorer/session"):
        assert (await client.get(path)).status == 404
    assert (await client.get("/healthz")).status == 200


@pytest.mark.parametrize("url", ["javascript:alert(1)//{StudyInstanceUID}",
                                 "//evil.example/{StudyInstanceUID}", "https://viewer.example/viewer",
                                 'https://v.example/"{StudyInstanceUID}', "ftp://viewer.example/{StudyInstanceUID}"])
def test_viewer_url_is_checked(url: str) -> None:
    with pytest.raises(ConfigError, match="viewer_url"):
        from_dict({"ui": {"viewer_url": url}})


def test_every_ui_key_is_in_the_example_config() -> None:
    example = tomllib.loads((REPO / "config.example.toml").read_text(encoding="utf-8"))
    assert set(example["ui"]) == {"enabled", "title", "viewer_url"}
    assert from_dict(example).ui.viewer_url == ""
    assert from_dict({"ui": {"viewer_url": VIEWER}}).ui.viewer_url == VIEWER


def test_package_data_carries_every_static_file() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = [p.relative_to(STATIC.parent).as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert files and all(any(fnmatch.fnmatch(f, pat) for pat in patterns["archive.ui"]) for f in files), files


async def test_extra_facets_only_when_asked(client) -> None:
    body, ctype = multipart([synth.instance(modality="MR")])
    assert (await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})).status == 200
    default = await (await client.post("/api/cohorts/query", json={})).json()
    assert "institution" not in default["facets"] and "release_state" not in default["facets"]
    asked = await (await client.post("/api/cohorts/query", json={"facets": ["institution", "release_state"],
                                                                 "limit": 1})).json()
    assert list(asked["facets"]) == ["institution", "release_state"]
    assert asked["facets"]["release_state"] == [{"value": "open", "studies": 1, "patients": 1}]
    assert asked["studies"][0]["release_state"] == "open"
    for bad in (["nope"], "institution", [1]):
        resp = await client.post("/api/cohorts/query", json={"facets": bad})
        assert resp.status == 400 and (await resp.json())["field"] == "facets"
