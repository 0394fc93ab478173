"""DIMSE with dcmtk's command-line tools as the PACS (echoscu, storescu, findscu, movescu, getscu,
storescp), checked through DICOMweb; pynetdicom as SCU only where dcmtk refuses to send what a
test needs (truncated or inconsistent data sets, files dcmtk cannot read).

dcmtk re-encodes the data sets it sends (explicit item and sequence lengths, no group lengths,
odd values padded, OB for encapsulated Pixel Data), so instances sent by storescu are compared with
their files element by element; instances sent by pynetdicom from the file's own bytes are
compared byte for byte.
"""

from __future__ import annotations

import fnmatch
import re
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.filewriter import write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

from tests import synth
from tests.conftest import LiveServer, free_port, multipart, stop_process
from tests.dcmtk import tool
from tests.samples import Sample, shared_available, storable
from tests.test_roundtrip import parse_multipart

TIMEOUT = 60  # seconds, for every dcmtk process
AET = "IMAGING-ARCHIVE"
DICOM_ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DUPLICATE_SOP_INSTANCE = 0x0111
NOT_AUTHORIZED = 0x0124
DOES_NOT_MATCH = 0xA900

# Retired JPEG transfer syntaxes that STOW-RS stores but the DIMSE listener does not negotiate
# (pynetdicom's ALL_TRANSFER_SYNTAXES leaves them out): test_retired_jpeg_transfer_syntaxes.
RETIRED_JPEG = {"1.2.840.10008.1.2.4.53": "JPEG Spectral Selection (Process 6 & 8)",
                "1.2.840.10008.1.2.4.55": "JPEG Full Progression (Process 10 & 12)"}
# Samples dcmtk 3.6.7's storescu cannot send; test_pynetdicom_store_is_byte_exact sends them.
DCMTK_CANNOT_SEND = {
    "1.2.840.10008.1.2.8.1": "dcmtk 3.6.7 does not know Deflated Image Frame Compression and "
                             "reads the file as explicit VR little endian ('unable to convert')",
}
DCMTK_CANNOT_READ = {
    "transfer-syntax/CT_J2K_explicit_VR_UN.dcm": "SOP Class/Instance UID are encoded with VR UN: "
                                                 "storescu finds 'No SOP Class or Instance UID'",
}


# -- helpers ------------------------------------------------------------------------------------

def run(args: list[str], cwd: Path | None = None, timeout: float = TIMEOUT) -> tuple[int, str]:
    """Run a dcmtk tool; its exit code and its log (stdout and stderr)."""
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, errors="replace",
                          timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@dataclass
class Record:
    """One sample file and the index attributes C-FIND matches, read from the file itself."""

    sample: Sample
    ds: Dataset  # without pixel data
    ts: str

    @property
    def name(self) -> str:
        return self.sample.name

    def get(self, keyword: str) -> str:
        return text(self.ds.get(keyword))


def text(value: Any) -> str:
    """An element value as C-FIND matching sees it (``\\`` between values)."""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _records() -> list[Record]:
    out = []
    for s in storable():
        ds = dcmread(s.path, stop_before_pixels=True)
        out.append(Record(s, ds, str(ds.file_meta.TransferSyntaxUID)))
    return out


RECORDS = _records()


def _dcmtk_sendable(rec: Record) -> bool:
    return (rec.ts not in RETIRED_JPEG and rec.ts not in DCMTK_CANNOT_SEND
            and rec.name not in DCMTK_CANNOT_READ)


def _first_per_uid(records: list[Record]) -> list[Record]:
    """What a run that sends ``records`` in this order stores: the first file of each SOP
    Instance UID; a later one with that UID is another data set, refused with 0x0111."""
    seen: dict[str, Record] = {}
    for r in records:
        seen.setdefault(r.get("SOPInstanceUID"), r)
    return list(seen.values())


def storescu_config(path: Path, records: list[Record]) -> None:
    """A storescu association profile "Samples": one presentation context per (SOP class,
    transfer syntax) of ``records``, each proposing only that transfer syntax, so that every
    file goes as it is, in its own transfer syntax, and several of them share one association."""
    pairs = list(dict.fromkeys((r.get("SOPClassUID"), r.ts) for r in records))
    assert len(pairs) <= 128, "PS3.8: at most 128 presentation contexts"
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for n, (sop_class, ts) in enumerate(pairs, start=1):
        lines.append(f"PresentationContext{n} = {sop_class}\\TS{syntaxes.index(ts)}")
    lines += ["[[Profiles]]", "[Samples]", "PresentationContexts = Contexts"]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


_RESPONSE = re.compile(r"^I: Received Store Response \((.*)\)\s*$")
_SENDING = re.compile(r"^I: Sending file: (.*?)\s*$")
_FAILED = re.compile(r"^E: Store Failed, file: (.*?):?\s*$")


def store_statuses(log: str) -> dict[str, str]:
    """File -> storescu's verdict ("Success", "Unknown Status: 0x111", "send failed", ...)."""
    out: dict[str, str] = {}
    current = None
    for line in log.splitlines():
        if m := _SENDING.match(line):
            current = m.group(1)
        elif (m := _RESPONSE.match(line)) and current:
            out[current] = m.group(1)
            current = None
        elif (m := _FAILED.match(line)) and current:
            out[current] = "send failed"
            current = None
    return out


def status_code(text: str) -> int | None:
    """The numeric status in a dcmtk status text, 0 for Success; None if none is given."""
    if text == "Success":
        return 0
    m = re.search(r"0x([0-9a-fA-F]{1,4})", text)
    return int(m.group(1), 16) if m else None


def data_set_bytes(part10: bytes) -> bytes:
    """The bytes after the File Meta of a PS3.10 file."""
    assert part10[128:132] == b"DICM"
    return part10[144 + struct.unpack("<L", part10[140:144])[0]:]


def _elements(ds: Dataset) -> dict[Any, Any]:
    # Group lengths, File Meta and trailing padding are encoding details dcmtk drops or rebuilds.
    return {e.tag: e for e in ds if e.tag.element != 0 and e.tag.group != 2 and e.tag != 0xFFFCFFFC}


def _pixel_data_equal(original: Any, back: Any, encapsulated: bool) -> bool:
    if original == back:
        return True
    if encapsulated:  # dcmtk may rewrite the item framing; the fragments must be the same
        return list(generate_fragments(original)) == list(generate_fragments(back))
    return len(original) % 2 == 1 and back == original + b"\0"  # dcmtk pads odd lengths


def dataset_differences(original: Dataset, back: Dataset, encapsulated: bool, path: str = "") -> list[str]:
    """Where ``back`` differs from ``original`` beyond dcmtk's re-encoding (empty: equal)."""
    a, b = _elements(original), _elements(back)
    diffs = [f"{path}{t} only in {'original' if t in a else 'retrieved'}" for t in sorted(set(a) ^ set(b))]
    for tag in sorted(set(a) & set(b)):
        x, y = a[tag], b[tag]
        if tag == 0x7FE00010 and path == "":
            if not _pixel_data_equal(x.value, y.value, encapsulated):
                diffs.append("PixelData differs")
            continue
        if x.VR != y.VR:
            diffs.append(f"{path}{tag} VR {x.VR} != {y.VR}")
        elif x.VR == "SQ":
            if len(x.value) != len(y.value):
                diffs.append(f"{path}{tag} has {len(y.value)} items, not {len(x.value)}")
            for i, (ia, ib) in enumerate(zip(x.value, y.value, strict=False)):
                diffs += dataset_differences(ia, ib, encapsulated, f"{path}{tag}[{i}].")
        elif x.value != y.value:
            diffs.append(f"{path}{tag} {str(x.value)[:40]!r} != {str(y.value)[:40]!r}")
    return diffs


def wado_instance(server: LiveServer, ds: Dataset) -> bytes:
    url = (f"{server.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    resp = requests.get(url, headers={"Accept": DICOM_ANY_TS}, timeout=30)
    assert resp.status_code == 200, (url, resp.status_code, resp.text[:200])
    parts = parse_multipart(resp.content, resp.headers["Content-Type"])
    assert len(parts) == 1
    return parts[0][1]


def qido(server: LiveServer, path: str, **params: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{server.url}/dicom-web/{path}", params=params, timeout=30)
    assert resp.status_code in (200, 204), (path, params, resp.status_code, resp.text[:200])
    return resp.json() if resp.status_code == 200 else []


def all_sop_uids(server: LiveServer) -> set[str]:
    found = qido(server, "instances", limit="1000")
    return {d["00080018"]["Value"][0] for d in found}


def verify_stored(server: LiveServer, expected: list[Record]) -> None:
    """QIDO-RS finds exactly ``expected`` (and the right counts per study), and WADO-RS returns
    each as its original: same transfer syntax, same data set."""
    assert all_sop_uids(server) == {r.get("SOPInstanceUID") for r in expected}
    per_study: dict[str, int] = {}
    for r in expected:
        per_study[r.get("StudyInstanceUID")] = per_study.get(r.get("StudyInstanceUID"), 0) + 1
    for study, count in per_study.items():
        (found,) = qido(server, "studies", StudyInstanceUID=study)
        assert found["00201208"]["Value"] == [count], study
    problems = {}
    for r in expected:
        (found,) = qido(server, f"studies/{r.get('StudyInstanceUID')}/series/{r.get('SeriesInstanceUID')}"
                        "/instances", SOPInstanceUID=r.get("SOPInstanceUID"))
        assert found["00080016"]["Value"] == [r.get("SOPClassUID")], r.name
        back = dcmread(BytesIO(wado_instance(server, r.ds)))
        original = dcmread(r.sample.path)
        diffs = dataset_differences(original, back, UID(r.ts).is_encapsulated)
        if str(back.file_meta.TransferSyntaxUID) != r.ts:
            diffs.insert(0, f"transfer syntax {back.file_meta.TransferSyntaxUID} != {r.ts}")
        if diffs:
            problems[r.name] = diffs[:5]
    assert not problems


def echo(server: LiveServer, aet: str = "ECHOSCU") -> tuple[int, str]:
    return run([tool("echoscu"), "-v", "-aet", aet, "-aec", AET, "127.0.0.1", str(server.dimse_port)])


def start_server(root: Path, extra_toml: str = "") -> LiveServer:
    root.mkdir(parents=True, exist_ok=True)
    server = LiveServer(root, extra_toml, dimse=True)
    server.start()
    return server


def server_log(server: LiveServer) -> str:
    return (server.root / "server.log").read_text(encoding="utf-8", errors="replace")


def by_name(name: str) -> Record:
    for r in RECORDS:
        if r.name == name:
            return r
    pytest.skip(f"sample {name} is not available (shared samples missing)")


# -- the archive every query/retrieve test reads: every sendable sample, one association ----------

@dataclass
class Pacs:
    server: LiveServer
    sent: list[Record]
    stored: list[Record]  # the first file of each SOP Instance UID
    log: str  # storescu's
    statuses: dict[str, str]  # file path -> storescu's verdict
    dest_port: int  # where the C-MOVE destination "DEST" listens (storescp, started by a test)
    work: Path


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, db_backend: str) -> Iterator[Pacs]:
    storescu = tool("storescu")
    work = tmp_path_factory.mktemp("dimse")
    dest_port = free_port()
    server = start_server(work / "archive", "[dimse.peers.dest]\n"
                          f'ae_title = "DEST"\nhost = "127.0.0.1"\nport = {dest_port}\n')
    try:
        sent = [r for r in RECORDS if _dcmtk_sendable(r)]
        cfg = work / "storescu.cfg"
        storescu_config(cfg, sent)
        code, log = run([storescu, "-v", "-nh", "-aet", "STORESCU", "-aec", AET, "-xf", str(cfg), "Samples",
                         "127.0.0.1", str(server.dimse_port)] + [str(r.sample.path) for r in sent])
        assert code == 0, log[-3000:]
        yield Pacs(server, sent, _first_per_uid(sent), log, store_statuses(log), dest_port, work)
    finally:
        server.stop()


# -- C-ECHO, C-STORE ------------------------------------------------------------------------------

@pytest.mark.databases
def test_echo(pacs: Pacs) -> None:
    code, log = echo(pacs.server)
    assert code == 0, log
    assert "Received Echo Response (Success)" in log


@pytest.mark.databases
def test_storescu_one_association_several_transfer_syntaxes(pacs: Pacs) -> None:
    log = pacs.log
    assert log.count("Association Accepted") == 1 and log.count("Requesting Association") == 1
    # Every file went in its own transfer syntax (dcmtk logs "X -> X" for uncompressed ones).
    conversions = re.findall(r"Converting transfer syntax: (.*) -> (.*)", log)
    assert all(a.strip() == b.strip() for a, b in conversions), conversions
    first = {id(r) for r in pacs.stored}
    wrong = {}
    for r in pacs.sent:
        got = pacs.statuses.get(str(r.sample.path), "not sent")
        want = 0 if id(r) in first else DUPLICATE_SOP_INSTANCE
        if status_code(got) != want:
            wrong[r.name] = got
    assert not wrong
    syntaxes = {r.ts for r in pacs.stored}
    assert len(syntaxes) >= min(8, len({r.ts for r in pacs.sent})), syntaxes
    # The same SOP Instance UID in two encodings: the second is another data set -> 0x0111.
    if shared_available():
        a = by_name("transfer-syntax/CT_BigEndianExplicit.dcm")
        b = by_name("transfer-syntax/CT_LittleEndianExplicit.dcm")
        assert a.get("SOPInstanceUID") == b.get("SOPInstanceUID")
        assert pacs.statuses[str(a.sample.path)] == "Success"
        assert status_code(pacs.statuses[str(b.sample.path)]) == DUPLICATE_SOP_INSTANCE


@pytest.mark.databases
def test_storescu_stored_instances_come_back_identical(pacs: Pacs) -> None:
    verify_stored(pacs.server, pacs.stored)


def test_storescu_one_association_per_file(tmp_path: Path) -> None:
    """One storescu process per file, in reverse order (so other encodings of the shared UIDs
    are the ones stored), on a fresh archive."""
    storescu = tool("storescu")
    sent = [r for r in reversed(RECORDS) if _dcmtk_sendable(r)]
    cfg = tmp_path / "storescu.cfg"
    storescu_config(cfg, sent)
    server = start_server(tmp_path / "archive")
    try:
        first = {id(r) for r in _first_per_uid(sent)}
        wrong = {}
        for r in sent:
            _, log = run([storescu, "-v", "-aec", AET, "-xf", str(cfg), "Samples", "127.0.0.1",
                          str(server.dimse_port), str(r.sample.path)])
            got = store_statuses(log).get(str(r.sample.path), "not sent")
            if log.count("Association Accepted") != 1 or status_code(got) != (
                    0 if id(r) in first else DUPLICATE_SOP_INSTANCE):
                wrong[r.name] = got
        assert not wrong
        verify_stored(server, _first_per_uid(sent))
    finally:
        server.stop()


def test_pynetdicom_store_is_byte_exact(tmp_path: Path) -> None:
    """Files sent as their own bytes (pynetdicom, chunked from the file) come back with the same
    data set bytes, including those dcmtk cannot send and the odd encodings."""
    from pynetdicom import AE

    odd = ["1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5"]  # deflate, BE, RLE
    wanted = [r for r in RECORDS if r.ts in DCMTK_CANNOT_SEND or r.name in DCMTK_CANNOT_READ or r.ts in odd]
    # One per SOP Instance UID, the rarest encodings first.
    records = _first_per_uid(sorted(wanted, key=lambda r: odd.index(r.ts) if r.ts in odd else -1))
    if not records:
        pytest.skip("no such samples (shared samples missing)")
    server = start_server(tmp_path / "archive")
    try:
        ae = AE(ae_title="PYNETDICOM")
        for r in records:
            ae.add_requested_context(r.get("SOPClassUID"), r.ts)
        statuses = _send_files(ae, server, [r.sample.path for r in records])
        assert statuses == [0] * len(records), list(zip([r.name for r in records], statuses, strict=True))
        for r in records:
            back = wado_instance(server, r.ds)
            assert data_set_bytes(back) == data_set_bytes(r.sample.path.read_bytes()), r.name
    finally:
        server.stop()


def _send_files(ae: Any, server: LiveServer, paths: list[Path]) -> list[int]:
    """C-STOREs of the files' own data set bytes (pynetdicom's chunked sending) on one
    association; the status of each."""
    from pynetdicom import _config

    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=AET)
    try:
        assert assoc.is_established
        out = []
        for path in paths:
            status = assoc.send_c_store(path)
            assert "Status" in status, f"no C-STORE response for {path.name}: association lost"
            out.append(int(status.Status))
        return out
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
        if assoc.is_established:
            assoc.release()


def test_retired_jpeg_transfer_syntaxes(tmp_path: Path) -> None:
    """Files in the retired JPEG transfer syntaxes are stored by STOW-RS (test_roundtrip); a PACS
    sending them over DIMSE in their own transfer syntax must be able to as well."""
    records = [r for r in RECORDS if r.ts in RETIRED_JPEG]
    if not records:
        pytest.skip("no sample in a retired JPEG transfer syntax")
    storescu = tool("storescu")
    cfg = tmp_path / "storescu.cfg"
    storescu_config(cfg, records)
    server = start_server(tmp_path / "archive")
    try:
        _, log = run([storescu, "-v", "+v", "-nh", "-aec", AET, "-xf", str(cfg), "Samples", "127.0.0.1",
                      str(server.dimse_port)] + [str(r.sample.path) for r in records])
        statuses = store_statuses(log)
        got = {r.name: statuses.get(str(r.sample.path), "not sent") for r in records}
        assert got == {r.name: "Success" for r in records}, (got, [RETIRED_JPEG[r.ts] for r in records])
        verify_stored(server, _first_per_uid(records))
    finally:
        server.stop()


# -- C-FIND ------------------------------------------------------------------------------------

def _pn_match(pattern: str, value: str) -> bool:
    return fnmatch.fnmatchcase(value.upper(), pattern.upper().replace("[", "[[]"))


def _matches(rec: Record, keyword: str, key: str) -> bool:
    """PS3.4 C.2.2.2 matching of one key as the archive documents it (README: person names
    case-insensitive); an empty value in the entity matches no non-universal key."""
    value = rec.get(keyword)
    vr = rec.ds[keyword].VR if keyword in rec.ds else {"Modality": "CS"}.get(keyword, "LO")
    if keyword.endswith("UID"):
        return value in key.split("\\")
    if keyword.endswith("Date") and "-" in key:
        low, _, high = key.partition("-")
        digits = value.replace(".", "")
        return bool(digits) and (not low or digits >= low) and (not high or digits <= high)
    if vr == "PN":
        return _pn_match(key, value)
    if "*" in key or "?" in key:
        return fnmatch.fnmatchcase(value, key)
    return value in key.split("\\") if vr == "CS" else value == key


_UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
           "IMAGE": "SOPInstanceUID"}


def series_modalities(recs: list[Record]) -> set[str]:
    """ModalitiesInStudy: the Modality of each series, a series-level attribute, which the index
    takes from the first instance stored (one sample series holds a CT and an SR instance)."""
    first: dict[str, str] = {}
    for r in recs:
        first.setdefault(r.get("SeriesInstanceUID"), r.get("Modality"))
    return set(first.values())


def expected_matches(stored: list[Record], level: str, keys: dict[str, str]) -> dict[str, list[Record]]:
    """Unique key value -> the stored records of each entity of ``level`` that ``keys`` match."""
    groups: dict[str, list[Record]] = {}
    for r in stored:
        groups.setdefault(r.get(_UNIQUE[level]), []).append(r)
    out = {}
    for uid, recs in groups.items():
        ok = True
        for keyword, key in keys.items():
            if not key or key == "*":
                continue
            if keyword == "ModalitiesInStudy":
                ok &= bool(series_modalities(recs) & set(key.split("\\")))
            else:
                ok &= _matches(recs[0], keyword, key)
        if ok:
            out[uid] = recs
    return out


def expected_value(keyword: str, recs: list[Record]) -> str | None:
    """The value an entity's return key must have, or None where the test does not check it."""
    if keyword == "NumberOfStudyRelatedInstances" or keyword == "NumberOfSeriesRelatedInstances":
        return str(len(recs))
    if keyword == "NumberOfStudyRelatedSeries":
        return str(len({r.get("SeriesInstanceUID") for r in recs}))
    if keyword == "ModalitiesInStudy":
        return "\\".join(sorted(series_modalities(recs)))
    if keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
                   "StudyDate", "InstanceNumber", "PatientID", "Rows"):
        return recs[0].get(keyword)
    if keyword == "PatientName":
        value = recs[0].get(keyword)
        return value if value.isascii() else None
    return None


def findscu(server: LiveServer, cwd: Path, model: str, keys: dict[str, str],
            aet: str = "FINDSCU") -> tuple[int, str]:
    """findscu with ``keys`` (an empty value: a return key), its responses written to ``cwd``."""
    cwd.mkdir(exist_ok=True)
    args = [tool("findscu"), "-v", model, "-X", "-aet", aet, "-aec", AET]
    for keyword, value in keys.items():
        args += ["-k", f"{keyword}={value}" if value else keyword]
    return run(args + ["127.0.0.1", str(server.dimse_port)], cwd=cwd)


def responses(cwd: Path) -> list[Dataset]:
    return [dcmread(p) for p in sorted(cwd.glob("rsp*.dcm"))]


def _uid(name: str, keyword: str) -> str:
    return by_name(name).get(keyword)


# (id, information model, level, keys: keyword -> value, "" = return key; a callable value is
# resolved from the samples when the test runs)
_CASES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("patient-root PATIENT, name wildcard (case-insensitive)", "-P", "PATIENT",
     {"PatientName": "compressedsamples*", "PatientID": "", "PatientBirthDate": "", "PatientSex": ""}),
    ("patient-root STUDY, single PatientID", "-P", "STUDY",
     {"PatientID": lambda: _uid("transfer-syntax/CT_JPEG2000.dcm", "PatientID"), "StudyInstanceUID": "",
      "StudyDate": "", "NumberOfStudyRelatedInstances": "", "ModalitiesInStudy": ""}),
    ("patient-root SERIES", "-P", "SERIES",
     {"PatientID": lambda: _uid("ct/CT_small_highdicom.dcm", "PatientID"),
      "StudyInstanceUID": lambda: _uid("ct/CT_small_highdicom.dcm", "StudyInstanceUID"),
      "SeriesInstanceUID": "", "Modality": "", "NumberOfSeriesRelatedInstances": ""}),
    ("patient-root IMAGE", "-P", "IMAGE",
     {"PatientID": lambda: _uid("color/TestPattern_RGB.dcm", "PatientID"),
      "StudyInstanceUID": lambda: _uid("color/TestPattern_RGB.dcm", "StudyInstanceUID"),
      "SeriesInstanceUID": lambda: _uid("color/TestPattern_RGB.dcm", "SeriesInstanceUID"),
      "SOPInstanceUID": "", "SOPClassUID": "", "InstanceNumber": ""}),
    ("study-root STUDY, date range", "-S", "STUDY",
     {"StudyDate": "20040101-20101231", "StudyInstanceUID": "", "PatientName": "", "ModalitiesInStudy": "",
      "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": ""}),
    ("study-root STUDY, open date range and ModalitiesInStudy", "-S", "STUDY",
     {"StudyDate": "20030101-", "ModalitiesInStudy": "SEG", "StudyInstanceUID": "", "PatientID": ""}),
    ("study-root STUDY, UID list", "-S", "STUDY",
     {"StudyInstanceUID": lambda: "\\".join(_uid(n, "StudyInstanceUID") for n in (
         "color/TestPattern_RGB.dcm", "rt/RTSTRUCT.dcm", "charset/chrGerm.dcm")),
      "StudyDate": "", "AccessionNumber": "", "PatientName": ""}),
    ("study-root SERIES, Modality wildcard S?", "-S", "SERIES",
     {"Modality": "S?", "StudyInstanceUID": "", "SeriesInstanceUID": "", "SeriesDescription": ""}),
    ("study-root SERIES of one study", "-S", "SERIES",
     {"StudyInstanceUID": lambda: _uid("transfer-syntax/CT_JPEG2000.dcm", "StudyInstanceUID"),
      "SeriesInstanceUID": "", "Modality": "", "NumberOfSeriesRelatedInstances": ""}),
    ("study-root IMAGE, SOP Instance UID list", "-S", "IMAGE",
     {"StudyInstanceUID": lambda: _uid("color/TestPattern_RGB.dcm", "StudyInstanceUID"),
      "SeriesInstanceUID": lambda: _uid("color/TestPattern_RGB.dcm", "SeriesInstanceUID"),
      "SOPInstanceUID": lambda: _uid("color/TestPattern_RGB.dcm", "SOPInstanceUID") + "\\"
      + _uid("color/TestPattern_JPEG-LS-Lossless.dcm", "SOPInstanceUID"),
      "SOPClassUID": "", "InstanceNumber": "", "Rows": ""}),
    ("study-root IMAGE, SOP class", "-S", "IMAGE",
     {"StudyInstanceUID": lambda: _uid("sm/SM_wholeslide_JPEGLS.dcm", "StudyInstanceUID"),
      "SOPClassUID": lambda: _uid("sm/SM_wholeslide_JPEGLS.dcm", "SOPClassUID"),
      "SOPInstanceUID": "", "SeriesInstanceUID": ""}),
]


@pytest.mark.parametrize(("model", "level", "keys"), [c[1:] for c in _CASES], ids=[c[0] for c in _CASES])
@pytest.mark.databases
def test_cfind(pacs: Pacs, tmp_path: Path, model: str, level: str, keys: dict[str, Any]) -> None:
    keys = {k: (v() if callable(v) else v) for k, v in keys.items()}
    expected = expected_matches(pacs.stored, level, keys)
    if not expected and not shared_available():
        pytest.skip("no bundled sample matches")
    assert expected, "the case must match something"
    code, log = findscu(pacs.server, tmp_path, model, {"QueryRetrieveLevel": level, **keys})
    assert code == 0, log
    assert "Received Final Find Response (Success)" in log, log[-2000:]
    found = responses(tmp_path)
    unique = _UNIQUE[level]
    got = [str(ds.get(unique, "")) for ds in found]
    assert sorted(got) == sorted(expected), (sorted(got), sorted(expected))
    wrong = []
    for ds in found:
        assert ds.QueryRetrieveLevel == level
        assert ds.RetrieveAETitle == AET
        recs = expected[str(ds.get(unique))]
        for keyword in keys:
            if keyword not in ds:
                wrong.append(f"{ds.get(unique)}: return key {keyword} missing")
                continue
            want = expected_value(keyword, recs)
            value = text(ds[keyword].value)
            if keyword == "ModalitiesInStudy":
                value = "\\".join(sorted(value.split("\\")))
            if want is not None and value != want:
                wrong.append(f"{ds.get(unique)}: {keyword} = {value!r}, expected {want!r}")
    assert not wrong


@pytest.mark.databases
def test_cfind_level_outside_the_information_model(pacs: Pacs, tmp_path: Path) -> None:
    """PATIENT is not a level of the study root model: a failure status, no match."""
    code, log = findscu(pacs.server, tmp_path, "-S", {"QueryRetrieveLevel": "PATIENT", "PatientID": ""})
    # dcmtk names 0xA900 "DataSetDoesNotMatchSOPClass"
    assert "Received Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in log, log
    assert responses(tmp_path) == []
    assert echo(pacs.server)[0] == 0


@pytest.mark.databases
def test_stow_rs_study_found_by_cfind(tmp_path: Path) -> None:
    study, series = synth.uid(), synth.uid()
    sops = [synth.uid(), synth.uid()]
    files = [synth.instance(study=study, series=series, sop=sop, patient_id="STOW-CFIND",
                            patient_name="Stow^Found", instance_number=n) for n, sop in enumerate(sops, 1)]
    server = start_server(tmp_path / "archive")
    try:
        body, ctype = multipart(files)
        resp = requests.post(f"{server.url}/dicom-web/studies", data=body,
                             headers={"Content-Type": ctype}, timeout=30)
        assert resp.status_code == 200, resp.text
        code, log = findscu(server, tmp_path / "s", "-S", {
            "QueryRetrieveLevel": "STUDY", "PatientName": "stow*", "StudyDate": "20240101-20240131",
            "StudyInstanceUID": "", "NumberOfStudyRelatedInstances": ""})
        assert code == 0, log
        (ds,) = responses(tmp_path / "s")
        assert ds.StudyInstanceUID == study
        assert (ds.NumberOfStudyRelatedInstances, ds.PatientName) == (2, "Stow^Found")
        code, log = findscu(server, tmp_path / "i", "-P", {
            "QueryRetrieveLevel": "IMAGE", "PatientID": "STOW-CFIND", "StudyInstanceUID": study,
            "SeriesInstanceUID": series, "SOPInstanceUID": "", "InstanceNumber": ""})
        assert code == 0, log
        found = {ds.SOPInstanceUID: ds.InstanceNumber for ds in responses(tmp_path / "i")}
        assert found == {sops[0]: 1, sops[1]: 2}
    finally:
        server.stop()


# -- C-MOVE, C-GET -----------------------------------------------------------------------------

class StoreScp:
    """dcmtk's storescp as the C-MOVE destination, accepting every transfer syntax."""

    def __init__(self, port: int, folder: Path, aet: str = "DEST") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.log = open(folder.parent / f"storescp-{port}.log", "wb")
        self.proc = subprocess.Popen([tool("storescp"), "-v", "-aet", aet, "-od", str(folder), "+xa",
                                      str(port)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:  # ready when it answers a C-ECHO
            assert self.proc.poll() is None, "storescp exited"
            code, _ = run([tool("echoscu"), "-aec", aet, "-to", "1", "127.0.0.1", str(port)], timeout=10)
            if code == 0:
                break
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)

    def received(self) -> dict[str, Dataset]:
        return received(self.folder)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def received(folder: Path) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in folder.iterdir() if p.is_file())}


# getscu -v: "Number of Completed Suboperations : 2"; movescu -d: "Completed Suboperations : 2"
# (or "none" when absent) in each dumped C-MOVE-RSP.
_SUBOPS = re.compile(r"(Remaining|Completed|Failed|Warning) Suboperations\s*:\s*(\d+|none)")


def final_counts(log: str) -> dict[str, int]:
    """The sub-operation counts of the last C-MOVE/C-GET response in the log (absent ones: 0)."""
    counts = {"Remaining": 0, "Completed": 0, "Failed": 0, "Warning": 0}
    for kind, n in _SUBOPS.findall(log):
        counts[kind] = 0 if n == "none" else int(n)
    return counts


def final_status(log: str) -> int | None:
    """The status of the last DIMSE response dumped in a -d log."""
    found = re.findall(r"DIMSE Status\s*: 0x([0-9a-fA-F]{4})", log)
    return int(found[-1], 16) if found else None


def all_done(n: int) -> dict[str, int]:
    return {"Remaining": 0, "Completed": n, "Failed": 0, "Warning": 0}


def movescu(pacs: Pacs, model: str, keys: dict[str, str], dest: str = "DEST") -> tuple[int, str]:
    """movescu in debug mode (its only way to log the sub-operation counts)."""
    args = [tool("movescu"), "-d", model, "-aet", "MOVESCU", "-aec", AET, "-aem", dest]
    for keyword, value in keys.items():
        args += ["-k", f"{keyword}={value}"]
    return run(args + ["127.0.0.1", str(pacs.server.dimse_port)])


def check_arrived(arrived: dict[str, Dataset], expected: list[Record]) -> None:
    """Each expected instance arrived, with its data set; compressed ones in their own transfer
    syntax (uncompressed ones may come in another uncompressed one, as negotiated)."""
    assert sorted(arrived) == sorted(r.get("SOPInstanceUID") for r in expected)
    for r in expected:
        back = arrived[r.get("SOPInstanceUID")]
        ts = UID(str(back.file_meta.TransferSyntaxUID))
        if UID(r.ts).is_compressed or ts.is_compressed:
            assert ts == r.ts, r.name
        assert not dataset_differences(dcmread(r.sample.path), back, UID(r.ts).is_encapsulated), r.name


@pytest.mark.databases
def test_cmove_series_to_storescp(pacs: Pacs, tmp_path: Path) -> None:
    """Patient root, SERIES level: every instance of the series arrives, counts are right."""
    rec = by_name("ct/CT_small_highdicom.dcm")
    want = [r for r in pacs.stored if r.get("SeriesInstanceUID") == rec.get("SeriesInstanceUID")]
    assert len(want) >= 2
    scp = StoreScp(pacs.dest_port, tmp_path / "dest")
    try:
        code, log = movescu(pacs, "-P", {"QueryRetrieveLevel": "SERIES", "PatientID": rec.get("PatientID"),
                                         "StudyInstanceUID": rec.get("StudyInstanceUID"),
                                         "SeriesInstanceUID": rec.get("SeriesInstanceUID")})
        assert code == 0, log[-3000:]
        assert final_status(log) == 0, log[-3000:]
        assert final_counts(log) == all_done(len(want)), log[-3000:]
        check_arrived(scp.received(), want)
    finally:
        scp.stop()


@pytest.mark.databases
def test_cmove_studies_in_several_transfer_syntaxes(pacs: Pacs, tmp_path: Path) -> None:
    """Study root, a list of two studies whose instances are in nine transfer syntaxes: all of
    them arrive, each in its own transfer syntax (storescp accepts every one)."""
    studies = [_uid(n, "StudyInstanceUID")
               for n in ("color/TestPattern_RGB.dcm", "transfer-syntax/CT_JPEG2000.dcm")]
    want = [r for r in pacs.stored if r.get("StudyInstanceUID") in studies]
    scp = StoreScp(pacs.dest_port, tmp_path / "dest")
    try:
        code, log = movescu(pacs, "-S", {"QueryRetrieveLevel": "STUDY",
                                         "StudyInstanceUID": "\\".join(studies)})
        got = received(scp.folder)
        missing = sorted(r.name for r in want if r.get("SOPInstanceUID") not in got)
        assert not missing, (final_counts(log), missing, server_log(pacs.server)[-1500:])
        assert final_status(log) == 0, log[-3000:]
        assert final_counts(log) == all_done(len(want)), log[-3000:]
        assert code == 0, log[-3000:]
        check_arrived(got, want)
    finally:
        scp.stop()


@pytest.mark.databases
def test_cmove_unknown_destination(pacs: Pacs) -> None:
    study = _uid("color/TestPattern_RGB.dcm", "StudyInstanceUID")
    code, log = movescu(pacs, "-S", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study},
                        dest="NOWHERE")
    assert final_status(log) == 0xA801, log[-3000:]  # Refused: Move Destination unknown
    assert echo(pacs.server)[0] == 0


def getscu(pacs: Pacs, out: Path, rec: Record, *options: str) -> tuple[int, str]:
    out.mkdir()
    return run([tool("getscu"), "-v", "-S", *options, "-aet", "GETSCU", "-aec", AET, "-od", str(out),
                "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={rec.get('StudyInstanceUID')}",
                "-k", f"SeriesInstanceUID={rec.get('SeriesInstanceUID')}",
                "127.0.0.1", str(pacs.server.dimse_port)])


@pytest.mark.databases
def test_cget_series(pacs: Pacs, tmp_path: Path) -> None:
    rec = by_name("ct/CT_small_highdicom.dcm")
    want = [r for r in pacs.stored if r.get("SeriesInstanceUID") == rec.get("SeriesInstanceUID")]
    assert len(want) >= 2
    code, log = getscu(pacs, tmp_path / "get", rec)
    assert code == 0, log
    assert "Received Final C-GET Response (Success)" in log or "Received C-GET Response (Success)" in log, log
    assert final_counts(log) == all_done(len(want)), log
    check_arrived(received(tmp_path / "get"), want)


@pytest.mark.databases
def test_cget_compressed_series(pacs: Pacs, tmp_path: Path) -> None:
    """getscu +xw proposes, per SOP class, one context with JPEG 2000 first and the uncompressed
    syntaxes after it: the archive must accept JPEG 2000 and send its JPEG 2000 instances."""
    rec = by_name("chest-ct/CT_CTA_chest_J2K_1.dcm")
    want = [r for r in pacs.stored if r.get("SeriesInstanceUID") == rec.get("SeriesInstanceUID")]
    assert {r.ts for r in want} == {"1.2.840.10008.1.2.4.91"}
    code, log = getscu(pacs, tmp_path / "get", rec, "+xw")
    assert final_counts(log) == all_done(len(want)), (log, server_log(pacs.server)[-1500:])
    check_arrived(received(tmp_path / "get"), want)


# -- transfer syntax negotiation, access control, broken data sets ------------------------------

def test_storescu_combined_context_keeps_compression(tmp_path: Path) -> None:
    """A sender offering, in one presentation context, its compressed syntax first and the
    uncompressed ones as a fallback (storescu +C, as most modalities propose) must get the
    compressed one accepted: otherwise it decompresses, and the archive stores a copy that is
    not what the modality had (and no longer compressed)."""
    recs = [r for r in RECORDS if r.ts == "1.2.840.10008.1.2.4.70"][:1]  # JPEG lossless (-xs)
    if not recs:
        pytest.skip("no JPEG lossless sample")
    server = start_server(tmp_path / "archive")
    try:
        _, log = run([tool("storescu"), "-v", "+v", "+C", "-xs", "-aec", AET, "127.0.0.1",
                      str(server.dimse_port), str(recs[0].sample.path)])
        accepted = set(re.findall(r"Accepted Transfer Syntax: (\S+)", log))
        assert accepted == {"=JPEGLossless:Non-hierarchical-1stOrderPrediction"}, accepted
        status = store_statuses(log).get(str(recs[0].sample.path))
        assert status == "Success", (status, log[-1500:])
        verify_stored(server, recs)
    finally:
        server.stop()


def test_allow_list_rejects_unknown_calling_ae(tmp_path: Path) -> None:
    server = start_server(tmp_path / "archive", '[dimse.allow]\nstore = ["GOODAE"]\n'
                                                'query = ["GOODAE"]\nretrieve = ["GOODAE"]\n')
    try:
        code, log = echo(server, "BADAE")
        assert code != 0 and "Association Rejected" in log, log
        assert "Received Echo Response" not in log
        path = str(RECORDS[0].sample.path)
        _, log = run([tool("storescu"), "-v", "-aet", "BADAE", "-aec", AET, "127.0.0.1",
                      str(server.dimse_port), path])
        assert "Association Rejected" in log and "Received Store Response" not in log, log
        code, log = echo(server, "GOODAE")
        assert code == 0 and "Received Echo Response (Success)" in log, log
        assert all_sop_uids(server) == set()
    finally:
        server.stop()


def test_allow_list_store_only(tmp_path: Path) -> None:
    """Only storing is restricted (AE@host entries): a refused C-STORE gets 0x0124 and stores
    nothing, whether the AE title or the host is wrong; C-FIND by the same caller works."""
    server = start_server(tmp_path / "archive", "[dimse.allow]\n"
                                                'store = ["GOODAE@127.0.0.1", "OTHER@192.0.2.1"]\n')
    a = RECORDS[0]
    b = next(r for r in RECORDS if r.get("StudyInstanceUID") != a.get("StudyInstanceUID"))
    cfg = tmp_path / "storescu.cfg"
    storescu_config(cfg, [a, b])
    try:
        results = {}
        for aet, rec in (("GOODAE", a), ("BADAE", b), ("OTHER", b)):
            _, log = run([tool("storescu"), "-v", "-aet", aet, "-aec", AET, "-xf", str(cfg), "Samples",
                          "127.0.0.1", str(server.dimse_port), str(rec.sample.path)])
            results[aet] = status_code(store_statuses(log).get(str(rec.sample.path), "not sent"))
        assert results == {"GOODAE": 0, "BADAE": NOT_AUTHORIZED, "OTHER": NOT_AUTHORIZED}
        assert all_sop_uids(server) == {a.get("SOPInstanceUID")}
        code, log = findscu(server, tmp_path / "f", "-S",
                            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}, aet="BADAE")
        assert code == 0 and "Received Final Find Response (Success)" in log, log
        assert [ds.StudyInstanceUID for ds in responses(tmp_path / "f")] == [a.get("StudyInstanceUID")]
    finally:
        server.stop()


def _part10(meta: Dataset, data_set: bytes) -> bytes:
    buf = BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue() + data_set


def test_broken_cstore_data_sets_fail_and_the_server_keeps_serving(tmp_path: Path) -> None:
    """Truncated and garbled data sets, and data sets that contradict their C-STORE request, each
    get a failure status on an association that stays usable; nothing stored before changes, and
    nothing of them is left in storage."""
    from pynetdicom import AE

    good = [r for r in RECORDS if r.ts == ExplicitVRLittleEndian
            and "PixelData" in dcmread(r.sample.path)][:2]
    base = good[0]
    cfg = tmp_path / "storescu.cfg"
    storescu_config(cfg, good)
    server = start_server(tmp_path / "archive")
    try:
        _, log = run([tool("storescu"), "-v", "-aec", AET, "-xf", str(cfg), "Samples", "127.0.0.1",
                      str(server.dimse_port)] + [str(r.sample.path) for r in good])
        assert [status_code(s) for s in store_statuses(log).values()] == [0, 0], log
        before = {r.name: wado_instance(server, r.ds) for r in good}

        meta = dcmread(base.sample.path, stop_before_pixels=True).file_meta
        body = data_set_bytes(base.sample.path.read_bytes())
        fresh = synth.dataset()  # a new instance: declared MR, or under another SOP Instance UID
        fresh_body = data_set_bytes(synth.encode(fresh))
        as_mr, other_uid = Dataset(), Dataset()
        as_mr.update(fresh.file_meta)
        as_mr.MediaStorageSOPClassUID = MRImageStorage
        other_uid.update(fresh.file_meta)
        other_uid.MediaStorageSOPInstanceUID = synth.uid()
        broken = {
            "cut after 1500 bytes": _part10(meta, body[:1500]),
            "cut inside an element header": _part10(meta, body[:6]),
            "cut in the pixel data": _part10(meta, body[:-1001]),
            "garbage after the first elements": _part10(meta, body[:200] + bytes(range(256)) * 8),
            "empty data set": _part10(meta, b""),
            "SOP Class UID other than the request's": _part10(as_mr, fresh_body),
            "SOP Instance UID other than the request's": _part10(other_uid, fresh_body),
        }
        paths = []
        for n, data in enumerate(broken.values()):
            paths.append(tmp_path / f"broken{n}.dcm")
            paths[-1].write_bytes(data)
        fine = tmp_path / "fine.dcm"
        fine.write_bytes(synth.encode(synth.dataset()))
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(fresh.SOPClassUID, ExplicitVRLittleEndian)
        statuses = _send_files(ae, server, paths + [fine])  # the last one on the same association
        got = dict(zip(list(broken), statuses, strict=False))
        shown = {what: hex(s) for what, s in got.items()}
        assert all(s & 0xF000 == 0xC000 or s == DOES_NOT_MATCH for s in got.values()), shown
        assert got["SOP Class UID other than the request's"] == DOES_NOT_MATCH, shown
        assert got["SOP Instance UID other than the request's"] == DOES_NOT_MATCH, shown
        assert statuses[-1] == 0, "a good instance after the broken ones"

        code, log = echo(server)
        assert code == 0, log
        want = {r.get("SOPInstanceUID") for r in good} | {str(dcmread(fine).SOPInstanceUID)}
        assert all_sop_uids(server) == want
        assert {r.name: wado_instance(server, r.ds) for r in good} == before
        staged = [p for p in (server.root / "files" / "tmp").rglob("*") if p.is_file()]
        assert staged == [], "failed C-STOREs must leave no staged file"
        assert len(list((server.root / "files" / "data").rglob("*.dcm"))) == len(want)
    finally:
        server.stop()
