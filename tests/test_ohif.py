"""End to end: the OHIF viewer (@ohif/app 3.x, its prebuilt dist/) in headless Chromium against a
real ``imaging-archive serve``.

A CT study and a multi-frame study are stored by STOW-RS; tests/e2e/ohif.mjs then opens the
study list and each study in the viewer, and reports every request the viewer made to the archive
(tests/e2e/README.md). Per thumbnail setting of OHIF's DICOMweb data source, this asserts: the
study list shows the studies QIDO-RS reports; each study's image canvas is not blank; every
DICOMweb request got a 2xx; OHIF asked what it asks of any DICOMweb server (QIDO-RS with
``includefield`` and ``fuzzymatching=false``, series of a study, series metadata, one
``frames/N`` per frame with ``Accept: multipart/related; type=application/octet-stream;
transfer-syntax=*``, and ``/thumbnail`` or ``/rendered`` as the setting implies).

Needs node, the Debian ``chromium`` package and ``npm ci && node install-ohif.mjs`` in tests/e2e
(scripts/test does all three): missing, the test is skipped, or fails under CI. Screenshots and
the request logs go to artifacts/ohif/ (git-ignored), kept by CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from PIL import Image
from pydicom import dcmread

from tests.conftest import LiveServer, multipart
from tests.samples import IN_CI, REPO, SHARED_SAMPLES, shared_available

E2E = REPO / "tests" / "e2e"
ARTIFACTS = REPO / "artifacts" / "ohif"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
DRIVER_TIMEOUT = 120  # seconds, for one run of ohif.mjs (a browser, the list and every study)



@dataclass(frozen=True)
class Thumbnails:
    """OHIF's thumbnail settings (extensions/default DicomWebDataSource/retrieveThumbnail.ts) and
    the rendered resource they make it ask the archive for, if any."""

    rendering: str  # thumbnailRendering
    strategy: str  # thumbnailRequestStrategy
    resource: str | None  # "thumbnail", "rendered", or None: thumbnails drawn from frames


THUMBNAIL_SETTINGS = {
    # from the frames the viewer loads anyway
    "wadors": Thumbnails("wadors", "bulkDataRetrieve", None),
    # instance level, ?accept=image/jpeg, through dicomweb-client (Accept: */*)
    "thumbnail": Thumbnails("thumbnail", "bulkDataRetrieve", "thumbnail"),
    "rendered": Thumbnails("rendered", "bulkDataRetrieve", "rendered"),
    # series level, ?viewport=256,256, Accept: image/jpeg (OHIF's own default app-config.js)
    "thumbnail-fetch": Thumbnails("thumbnail", "fetch", "thumbnail"),
    "rendered-fetch": Thumbnails("rendered", "fetch", "rendered"),
    # an <img src> of instance level …/thumbnail?accept=image/jpeg
    "thumbnailDirect": Thumbnails("thumbnailDirect", "bulkDataRetrieve", "thumbnail"),
}
FRAMES_ACCEPT = ("multipart/related", "type=application/octet-stream", "transfer-syntax=*")


@dataclass(frozen=True)
class StudyFiles:
    label: str  # names the screenshots
    paths: list[Path]


def _study_files() -> list[StudyFiles]:
    """A CT study (JPEG 2000 and native) and a multi-frame one, from the shared samples or, on a
    clone without them, from pydicom's bundled files."""
    if shared_available():
        s = SHARED_SAMPLES
        return [StudyFiles("ct-j2k", sorted((s / "chest-ct").glob("CT_CTA_chest_J2K_*.dcm"))),
                StudyFiles("ct-native", [s / "transfer-syntax" / "CT_LittleEndianExplicit.dcm"]),
                StudyFiles("mr-16-frames", [s / "multiframe" / "MR_heart_16frames_explicitLE.dcm"])]
    if IN_CI:
        raise RuntimeError(f"CI needs the shared DICOM samples at {SHARED_SAMPLES}")
    from pydicom.data import get_testdata_file

    return [StudyFiles("ct-native", [Path(str(get_testdata_file("CT_small.dcm")))]),
            StudyFiles("us-30-frames", [Path(str(get_testdata_file("examples_ybr_color.dcm")))])]


def _missing_tools() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (Debian package chromium; or set CHROMIUM)"
    if not (E2E / "node_modules" / "playwright-core" / "package.json").is_file():
        return "playwright-core is not installed: run `npm ci` in tests/e2e"
    if not (E2E / "ohif-app" / "dist" / "index.html").is_file():
        return "the OHIF viewer is not installed: run `node install-ohif.mjs` in tests/e2e"
    return None


@dataclass
class Study:
    """What the archive reports of a stored study, through QIDO-RS."""

    label: str
    uid: str
    patient_name: str
    description: str
    instances: int
    series: list[str]
    frames: dict[tuple[str, str], int] = field(default_factory=dict)  # (series, sop) -> frames


@dataclass
class Archive:
    server: LiveServer
    studies: list[Study]

    @property
    def dicomweb(self) -> str:
        return self.server.url + "/dicom-web"


def _value(dataset: dict[str, Any], tag: str) -> Any:
    values = dataset.get(tag, {}).get("Value") or [None]
    return values[0]


def _qido(root: str, path: str, **params: str) -> list[dict[str, Any]]:
    response = requests.get(root + path, params=params, timeout=30)
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else []


def _describe(root: str, label: str, uid: str) -> Study:
    (found,) = _qido(root, "/studies", StudyInstanceUID=uid, includefield="StudyDescription")
    name = _value(found, "00100010") or {}
    study = Study(label, uid, name.get("Alphabetic", ""), _value(found, "00081030") or "",
                  int(_value(found, "00201208")),
                  [_value(s, "0020000E") for s in _qido(root, f"/studies/{uid}/series")])
    for instance in _qido(root, f"/studies/{uid}/instances", includefield="NumberOfFrames"):
        key = (_value(instance, "0020000E"), _value(instance, "00080018"))
        study.frames[key] = int(_value(instance, "00280008") or 1)
    return study


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    reason = _missing_tools()
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true: {reason} (scripts/test installs it)")
        pytest.skip(reason)
    server = LiveServer(tmp_path_factory.mktemp("ohif"))
    # The viewer is served from another origin (port) than the archive: it needs CORS.
    config = server.config.read_text().replace("[http]\n", '[http]\ncors_origins = ["*"]\n', 1)
    assert "cors_origins" in config, config
    server.config.write_text(config)
    server.start()
    try:
        studies = []
        for group in _study_files():
            body, content_type = multipart([p.read_bytes() for p in group.paths])
            headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
            response = requests.post(server.url + "/dicom-web/studies", data=body, headers=headers,
                                     timeout=60)
            assert response.status_code == 200, response.text
            assert "00081198" not in response.json(), response.text  # no FailedSOPSequence
            uids = {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in group.paths}
            assert len(uids) == 1, f"{group.label}: expected one study, got {uids}"
            studies.append(_describe(server.url + "/dicom-web", group.label, uids.pop()))
        assert len({s.uid for s in studies}) == len(studies)
        assert any(n > 1 for s in studies for n in s.frames.values()), "no multi-frame instance stored"
        yield Archive(server, studies)
    finally:
        server.stop()


# -- the run --------------------------------------------------------------------------------


def _run_viewer(archive: Archive, thumbnails: Thumbnails, out: Path) -> dict[str, Any]:
    """Runs tests/e2e/ohif.mjs check; its result.json."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    studies_file = out / "studies.json"
    studies_file.write_text(json.dumps([{"uid": s.uid, "label": s.label} for s in archive.studies]))
    command = ["node", str(E2E / "ohif.mjs"), "check", "--archive", archive.dicomweb,
               "--thumbnail", thumbnails.rendering, "--thumbnail-strategy", thumbnails.strategy,
               "--studies", str(studies_file), "--out", str(out), "--chromium", str(CHROMIUM)]
    try:
        run = subprocess.run(command, cwd=E2E, capture_output=True, text=True, timeout=DRIVER_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"ohif.mjs did not finish in {DRIVER_TIMEOUT} s: {exc.stderr!r}")
    (out / "driver.log").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, f"ohif.mjs failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    return json.loads((out / "result.json").read_text())


_UID = r"[0-9.]+"
_KINDS = [  # path patterns (below /dicom-web, query left out) -> the transaction they are
    (re.compile(r"/studies"), "QIDO studies"),
    (re.compile(rf"/studies/{_UID}/series"), "QIDO series"),
    (re.compile(rf"/studies/{_UID}(/series/{_UID})?/instances"), "QIDO instances"),
    (re.compile(rf"/studies/{_UID}(/series/{_UID}(/instances/{_UID})?)?/metadata"), "metadata"),
    (re.compile(rf"/studies/{_UID}/series/{_UID}/instances/{_UID}/frames/[0-9,]+"), "frames"),
    (re.compile(rf"/studies/{_UID}(/series/{_UID}(/instances/{_UID}(/frames/[0-9,]+)?)?)?/thumbnail"),
     "thumbnail"),
    (re.compile(rf"/studies/{_UID}(/series/{_UID}(/instances/{_UID}(/frames/[0-9,]+)?)?)?/rendered"),
     "rendered"),
]


def _kind(path: str) -> str:
    path = urlsplit(path).path
    for pattern, kind in _KINDS:
        if pattern.fullmatch(path):
            return kind
    return "other"


def _summary(log: list[dict[str, Any]]) -> str:
    counts = Counter((_kind(r["path"]), r["status"] or r["failure"]) for r in log)
    return "\n".join(f"  {kind:15} {status}: {n}" for (kind, status), n in sorted(counts.items(), key=str))


def _not_blank(path: Path) -> tuple[float, int]:
    """Fraction of pixels that are not black and the number of distinct grey levels."""
    with Image.open(path) as image:
        grey = image.convert("L")
        histogram = grey.histogram()
    total = sum(histogram)
    return 1 - sum(histogram[:9]) / total, sum(1 for n in histogram if n)


def _display_name(pn: str) -> str:
    """A Person Name as OHIF's study list shows it (core/src/utils/formatPN)."""
    return pn.replace("^", ", ", 1).replace("^", " ").strip()


# -- the test -------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", list(THUMBNAIL_SETTINGS))
def test_ohif_viewer(archive: Archive, setting: str) -> None:
    out = ARTIFACTS / setting
    thumbnails = THUMBNAIL_SETTINGS[setting]
    result = _run_viewer(archive, thumbnails, out)
    log: list[dict[str, Any]] = result["requests"]
    summary = _summary(log)
    (out / "summary.txt").write_text(summary + "\n")
    context = f"\nrequests to the archive ({setting}):\n{summary}\nartifacts: {out}"

    # The study list shows every stored study: its patient, description and instance count.
    rows = result["studyList"]["rows"]
    assert len(rows) == len(archive.studies), f"study list rows: {rows}{context}"
    for study in archive.studies:
        name = _display_name(study.patient_name)
        matching = [r for r in rows if name in r and (not study.description or study.description in r)]
        assert matching, f"no study list row for {study}: {rows}{context}"
        assert str(study.instances) in matching[0], f"{matching[0]} vs {study}{context}"

    # Every request to the archive was answered with a 2xx.
    failed = [r for r in log if r["status"] is None or not 200 <= r["status"] < 300]
    assert not failed, "requests not answered with a 2xx:\n" + "\n".join(
        f"  {r['method']} {r['path']} -> {r['status'] or r['failure']}" for r in failed) + context

    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in log:
        by_kind.setdefault(_kind(r["path"]), []).append(r)
    assert "other" not in by_kind, f"unexpected requests: {by_kind['other']}{context}"

    # QIDO-RS study search as OHIF makes it: includefield lists, no fuzzy matching.
    searches = [parse_qs(urlsplit(r["url"]).query) for r in by_kind.get("QIDO studies", [])]
    assert searches, f"no QIDO-RS study search{context}"
    assert all(q.get("fuzzymatching") == ["false"] and q.get("includefield") for q in searches), searches

    paths = {urlsplit(r["path"]).path for r in log}
    for study in archive.studies:
        assert f"/studies/{study.uid}/series" in paths, f"{study.label}: no series search{context}"
        for series in study.series:
            assert f"/studies/{study.uid}/series/{series}/metadata" in paths, \
                f"{study.label}: no metadata of series {series}{context}"

    # Frames: one frame per request, as stored (transfer-syntax=*), and every frame of every
    # instance (each study here is one series, which the viewer shows, and prefetches, as a stack).
    frames = by_kind.get("frames", [])
    assert frames, f"no frames requested{context}"
    for r in frames:
        assert all(part in (r["accept"] or "") for part in FRAMES_ACCEPT), f"frames Accept: {r}"
        assert "," not in urlsplit(r["path"]).path.rsplit("/", 1)[1], f"several frames in one request: {r}"
    for study in archive.studies:
        for (series, sop), count in study.frames.items():
            base = f"/studies/{study.uid}/series/{series}/instances/{sop}/frames/"
            missing = [n for n in range(1, count + 1) if f"{base}{n}" not in paths]
            assert not missing, f"{study.label}: frames {missing} of {count} of {sop} not requested{context}"

    # Thumbnails: the rendered resource the setting implies, and not the other one.
    for kind in ("thumbnail", "rendered"):
        if kind == thumbnails.resource:
            assert by_kind.get(kind), f"no {kind} request with the {setting} setting{context}"
        else:
            assert kind not in by_kind, f"{kind} requested with the {setting} setting{context}"

    # The viewer had nothing to complain of, and stopped asking (no retry loop).
    errors = result["pageErrors"] + [c for c in result["console"] if c["type"] == "error"]
    assert not errors, "errors in the page:\n" + "\n".join(f"  {e['text']}" for e in errors) + context
    assert all(s["settled"] for s in result["studies"]), f"requests went on for 15 s{context}"

    # The study browser shows each study's series with a thumbnail that loaded: an image the
    # browser could decode (for wadors, drawn from a frame; else the archive's JPEG).
    for shown in result["studies"]:
        thumbs = shown["thumbnails"]
        assert thumbs and all(t["loaded"] for t in thumbs), f"{shown['label']}: thumbnails {thumbs}{context}"

    # Each study's image is on the canvas: not blank, as measured in the page and on the PNG of
    # the canvas's pixels.
    assert [s["label"] for s in result["studies"]] == [s.label for s in archive.studies]
    for shown in result["studies"]:
        stats = shown["stats"] or {}
        assert shown["rendered"], f"{shown['label']}: blank canvas {stats}: {shown['screenshot']}{context}"
        assert shown["canvas"], f"{shown['label']}: no canvas saved{context}"
        lit, levels = _not_blank(Path(shown["canvas"]))
        assert lit > 0.01 and levels > 8, f"{shown['label']}: canvas blank ({lit:.3f}, {levels}){context}"
