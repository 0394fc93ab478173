"""Property-based tests (hypothesis, issue 5) of the two parsers that take whatever a client sends:

- the Part 10 parser: a valid file with random byte flips, cuts, insertions and deletions either
  parses or raises InvalidInstance (a failure entry / C-STORE status), never another exception,
  never a hang;
- the QIDO-RS parameter parser: any list of query parameters either gives a Query (from which
  the SQL statement builds) or raises QueryError (a 400), never another exception.

The runs are derandomized (the same examples every run) and kept small so that CI is stable.
"""

from __future__ import annotations

import tempfile
from io import BytesIO
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy.dialects import sqlite

from archive.dicom.part10 import InvalidInstance, ParsedInstance, parse_and_encode
from archive.query.attributes import ATTRIBUTES, Level
from archive.query.model import Query, QueryError
from archive.query.params import parse_qido
from archive.query.sql import build_select
from tests import badfiles, synth

PROFILE = settings(max_examples=200, derandomize=True, deadline=2000, database=None,
                   suppress_health_check=[HealthCheck.too_slow])

# Fixed UIDs so that the base files, and so the examples, are the same on every run.
_UIDS = {"study": "1.2.826.0.1.3680043.8.498.1", "series": "1.2.826.0.1.3680043.8.498.2",
         "sop": "1.2.826.0.1.3680043.8.498.3"}
VALID = synth.instance(**_UIDS)


def _deflated() -> bytes:
    meta = dcmread(BytesIO(VALID), stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return badfiles.with_meta(meta, badfiles.deflated(VALID[badfiles.layout(VALID).dataset_start:]))


DEFLATED = _deflated()

_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10 ** 6), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 10 ** 6), st.sampled_from([0x00, 0xFF, 0xFE, 0xE0, 0x7F])),
    st.tuples(st.just("insert"), st.integers(0, 10 ** 6), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 10 ** 6), st.integers(1, 16)),
    st.tuples(st.just("cut"), st.integers(0, 10 ** 6), st.just(0)),
)


def mutate(data: bytes, mutations: list[tuple[str, int, object]]) -> bytes:
    buf = bytearray(data)
    for kind, where, arg in mutations:
        at = where % (len(buf) + 1)
        if kind == "flip" and at < len(buf):
            buf[at] ^= arg  # type: ignore[operator]
        elif kind == "set" and at < len(buf):
            buf[at] = arg  # type: ignore[assignment]
        elif kind == "insert":
            buf[at:at] = arg  # type: ignore[assignment]
        elif kind == "delete":
            del buf[at:at + arg]  # type: ignore[operator]
        elif kind == "cut":
            del buf[at:]
    return bytes(buf)


def _parse(data: bytes) -> ParsedInstance | InvalidInstance:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "instance.dcm"
        path.write_bytes(data)
        try:
            return parse_and_encode(str(path), 1024, None)[0]
        except InvalidInstance as exc:
            assert str(exc), "a failure needs a reason"
            return exc


def _check_parsed(result: ParsedInstance | InvalidInstance) -> None:
    if isinstance(result, ParsedInstance):  # what ingest relies on for a stored instance
        for uid in (result.sop_instance_uid, result.study_uid, result.series_uid):
            assert "/" not in uid and ".." not in uid and len(uid) <= 64
        if result.pixel is not None:
            assert result.pixel.offset >= result.dataset_offset


def test_the_base_files_are_valid() -> None:
    assert isinstance(_parse(VALID), ParsedInstance)
    assert isinstance(_parse(DEFLATED), ParsedInstance)


@PROFILE
@given(st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_part10_parses_or_is_refused(mutations) -> None:
    _check_parsed(_parse(mutate(VALID, mutations)))


@settings(PROFILE, max_examples=100)
@given(st.lists(_mutation, min_size=1, max_size=3))
def test_mutated_deflated_part10_parses_or_is_refused(mutations) -> None:
    _check_parsed(_parse(mutate(DEFLATED, mutations)))


# -- QIDO-RS parameters ---------------------------------------------------------------------------

_KEYWORDS = [a.keyword for a in ATTRIBUTES] + [f"{a.tag:08X}" for a in ATTRIBUTES]
_KEYS = st.one_of(
    st.sampled_from(_KEYWORDS + ["limit", "offset", "fuzzymatching", "includefield"]),
    st.sampled_from(["PatientName.FamilyName", "00100010.00100020", "Unknown", "0010", "ZZZZZZZZ",
                     "", "x" * 300, "00081199", "PixelData", "7FE00010"]),
    st.text(max_size=20),
)
_VALUES = st.one_of(
    st.sampled_from(["", "*", "?", "DOE*", "D?E", "20200101-20201231", "20200101-", "-20201231", "-",
                     "1.2.3,4.5.6", ",", "1.2.3\\4", "' OR 1=1 --", "%", "_", "\\", "[a-z]", "\x00",
                     "-1", "99999999999999999999", "1e9", "1_000", " 5 ", "true", "false", "all",
                     "00100010,PatientID", "120000-", "235960", "20201301", "2020", "0x10",
                     "A" * 10_000]),
    st.text(max_size=40),
    st.from_regex(r"[0-9\-.:,*?]{0,24}", fullmatch=True),
)


@PROFILE
@given(st.sampled_from(list(Level)), st.lists(st.tuples(_KEYS, _VALUES), max_size=6),
       st.booleans())
def test_qido_parameters_parse_or_are_refused(level, params, with_study) -> None:
    fixed = {"StudyInstanceUID": "1.2.3.4"} if with_study and level > Level.STUDY else None
    try:
        query = parse_qido(level, params, fixed)
    except QueryError as exc:
        assert str(exc), "a 400 needs a reason"
        return
    assert isinstance(query, Query)
    assert query.limit is None or 0 <= query.limit
    assert 0 <= query.offset
    # The statement the search would run builds (and compiles) from whatever was accepted.
    build_select(query, 1000).compile(dialect=sqlite.dialect())
