"""Clinical data import: MIDRC / Gen3 TSV, CSV or JSON files in, validated row by row, then
upserted by submitter_id in one transaction. Any error anywhere leaves the database unchanged.

A file is one node (``case``, ``measurement``, ``imaging_study``), recognised by its ``type``
column or its name (``case.tsv``, ``case_RSNA_20220204.tsv``); a JSON file may mix nodes, each
record naming its ``type``. As in a Gen3 submission, an empty cell (or an absent column) leaves
the stored value unchanged: a re-import updates what it gives.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any, NamedTuple

from sqlalchemy import Column, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from archive.clinical.dictionary import (
    CASE,
    CASE_LINK_COLUMNS,
    NODES,
    OWNER,
    SYSTEM_COLUMNS,
    Node,
)

# Errors kept in a report; the count goes on (a wrong file can have one error per row).
MAX_ERRORS = 1000
_CHUNK = 500  # keys per IN (...) query, well under SQLite's limit on bound parameters
_EXTENSIONS = (".tsv", ".csv", ".json", ".txt")
_ATTEMPTS = 5
_LOCKS: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = weakref.WeakKeyDictionary()


class ClinicalError(NamedTuple):
    """One problem: ``line`` is the line in a TSV/CSV file (1 = the header), the position of the
    record (from 1) in a JSON file, 0 for the whole file."""

    file: str
    line: int
    field: str
    reason: str


@dataclass
class NodeCounts:
    inserted: int = 0
    updated: int = 0


@dataclass
class ImportReport:
    """What an import did (counts per node), or why it did nothing (errors)."""

    counts: dict[str, NodeCounts] = field(default_factory=lambda: {n: NodeCounts() for n in NODES})
    errors: list[ClinicalError] = field(default_factory=list)  # the first MAX_ERRORS
    error_count: int = 0
    notes: list[str] = field(default_factory=list)  # e.g. columns ignored

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def error(self, file: str, line: int, field_name: str, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(ClinicalError(file, line, field_name, reason))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": {node: {"inserted": c.inserted, "updated": c.updated}
                       for node, c in self.counts.items()},
            "error_count": self.error_count,
            "errors": [e._asdict() for e in self.errors],
            "notes": self.notes,
        }


@dataclass
class _Record:
    """A validated record: the columns it sets (non-empty values only)."""

    node: Node
    file: str
    line: int
    submitter_id: str
    values: dict[str, object]
    case: str | None = None  # the linked case's submitter_id
    case_field: str = ""  # the column or key the link came from


class _FileError(Exception):
    """A problem at a line of a file; raised while reading a file, it stops that file."""

    def __init__(self, line: int, reason: str, field_name: str = "") -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason
        self.field_name = field_name


def node_from_name(name: str) -> str | None:
    """The node a file name names: ``case.tsv``, ``imaging_study_site3.csv``; else None."""
    stem = PurePath(name).name.lower()
    for ext in _EXTENSIONS:
        stem = stem.removesuffix(ext)
    for node in sorted(NODES, key=len, reverse=True):
        if stem == node or any(stem.startswith(node + sep) for sep in "_-. "):
            return node
    return None


def _decode(data: bytes) -> str:
    """The text of a clinical file: UTF-8 (a byte order mark is fine), else a _FileError."""
    if not data.strip(b" \t\r\n\xef\xbb\xbf"):
        raise _FileError(0, "empty file")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _FileError(0, "UTF-16 text (it starts with a UTF-16 byte order mark); save the file as UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise _FileError(data[:nul].count(b"\n") + 1,
                         "contains NUL bytes: UTF-16 text without a byte order mark, or not a text file; "
                         "save the file as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise _FileError(line, f"not UTF-8: byte 0x{data[exc.start]:02X} at line {line} (Latin-1 or "
                               "Windows-1252 text?); save the file as UTF-8") from None


# ---------------------------------------------------------------- reading files into raw records

@dataclass
class _Raw:
    """A record as read: its line (or position), its node, its keys and values."""

    line: int
    node: Node
    values: dict[str, Any]


def _resolve_node(type_value: str, name_node: str | None, line: int) -> Node:
    if type_value:
        if type_value not in NODES:
            raise _FileError(line, f"{type_value!r} is not a node this archive imports "
                                   f"({', '.join(NODES)})", "type")
        return NODES[type_value]
    if name_node is None:
        raise _FileError(line, "no type: give a type column (case, measurement, imaging_study) or name "
                               "the file after its node, e.g. case.tsv", "type")
    return NODES[name_node]


def _header(cells: list[str]) -> list[str]:
    # MIDRC's templates mark required columns with "*" (*type, *submitter_id).
    return [c.strip().lstrip("*").strip().lower() for c in cells]


def _read_table(name: str, text: str, report: ImportReport) -> list[_Raw]:
    """Rows of a TSV or CSV file; problems of the header stop the file."""
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = "\t" if first_line.count("\t") >= first_line.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, list[str]]] = []
    line = 1
    try:
        for cells in reader:
            rows.append((line, cells))
            line = reader.line_num + 1
    except csv.Error as exc:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise _FileError(reader.line_num, f"malformed {kind}: {exc}") from None
    rows = [(n, cells) for n, cells in rows if any(c.strip() for c in cells)]  # blank lines
    if not rows:
        raise _FileError(0, "empty file")
    header_line, header_cells = rows[0]
    header = _header(header_cells)
    body = rows[1:]
    if not body:
        raise _FileError(header_line, "no records: the file has a header and nothing else")

    seen: set[str] = set()
    for column in header:
        if column and column in seen:
            raise _FileError(header_line, f"the column {column!r} appears twice", column)
        seen.add(column)
    type_value = ""
    if "type" in header:
        at = header.index("type")
        types = (cells[at].strip() for _, cells in body if len(cells) > at)
        type_value = next((t for t in types if t), "")
    name_node = node_from_name(name)
    node = _resolve_node(type_value, name_node, header_line)
    if type_value and name_node and name_node != type_value:
        raise _FileError(header_line, f"the file name says {name_node} but its type column says {type_value}",
                         "type")
    _check_columns(node, [c for c in header if c], header_line)
    _note_ignored(report, name, node, [c for c in header if c])

    raws: list[_Raw] = []
    for line_no, cells in body:
        if len(cells) > len(header) and any(c.strip() for c in cells[len(header):]):
            report.error(name, line_no, "", f"{len(cells)} cells, but the header has {len(header)} columns")
            continue
        # Fewer cells than columns: editors that trim trailing whitespace drop trailing empty cells.
        values = {column: cells[i] for i, column in enumerate(header) if column and i < len(cells)}
        row_type = values.get("type", "").strip()
        if row_type and row_type != node.name:
            report.error(name, line_no, "type", f"type {row_type!r} in a file of {node.name} records")
            continue
        raws.append(_Raw(line_no, node, values))
    return raws


def _check_columns(node: Node, columns: list[str], line: int) -> None:
    """Missing required columns and columns of another node make the file (or record) wrong."""
    if "submitter_id" not in columns:
        raise _FileError(line, "required column missing", "submitter_id")
    if node.links_to_case and not any(c in columns for c in (*CASE_LINK_COLUMNS, "cases")):
        raise _FileError(line, f"required link to the case missing: add a {CASE_LINK_COLUMNS[0]} column",
                         CASE_LINK_COLUMNS[0])
    for column in columns:
        owner = OWNER.get(column)
        if owner is not None and owner != node.name:
            raise _FileError(line, f"a column of {owner} records in a file of {node.name} records", column)


def _note_ignored(report: ImportReport, name: str, node: Node, columns: Iterable[str]) -> None:
    """Columns of a real submission this archive does not store (zip, country_of_residence, ...)
    are ignored, and said so."""
    ignored = sorted({c for c in columns if _ignored(node, c)})
    if ignored:
        report.notes.append(f"{name}: {node.name} columns ignored (not in this archive's dictionary): "
                            f"{', '.join(ignored)}")


def _ignored(node: Node, column: str) -> bool:
    if column in SYSTEM_COLUMNS or node.field(column) is not None:
        return False
    if node.links_to_case:
        return column not in (*CASE_LINK_COLUMNS, "cases")
    return column != "case_ids"  # a case's case_ids is its own submitter_id


def _read_json(name: str, text: str, report: ImportReport) -> list[_Raw]:
    """Records of a JSON file: a list of records, one record, or ``{"case": [...], ...}``."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _FileError(exc.lineno, f"not valid JSON: {exc.msg} (line {exc.lineno}, "
                                     f"column {exc.colno})") from None
    items: list[tuple[Any, str]]  # (record, node it was listed under, "" if none)
    if isinstance(doc, list):
        items = [(item, "") for item in doc]
    elif isinstance(doc, dict) and ("type" in doc or "submitter_id" in doc):
        items = [(doc, "")]
    elif isinstance(doc, dict):
        items = []
        for key, records in doc.items():
            if key not in NODES:
                raise _FileError(0, f"{key!r} is not a node this archive imports ({', '.join(NODES)})", key)
            if not isinstance(records, list):
                raise _FileError(0, f"the {key} records must be a list", key)
            items.extend((item, key) for item in records)
    else:
        raise _FileError(0, "a JSON file holds a list of records or an object")
    if not items:
        raise _FileError(0, "no records")
    name_node = node_from_name(name)
    raws: list[_Raw] = []
    keys: dict[str, set[str]] = defaultdict(set)  # per node, for one note about ignored keys
    for position, (item, listed_under) in enumerate(items, start=1):
        if not isinstance(item, dict):
            report.error(name, position, "", "a record must be a JSON object")
            continue
        values = {str(k).lstrip("*").lower(): v for k, v in item.items()}
        type_value = values.get("type") or listed_under
        if not isinstance(type_value, str):
            report.error(name, position, "type", f"{type_value!r} is not a node name")
            continue
        try:
            node = _resolve_node(type_value, name_node, position)
            if listed_under and type_value != listed_under:
                raise _FileError(position, f"type {type_value!r} in the list of {listed_under} records",
                                 "type")
            _check_columns(node, list(values), position)
        except _FileError as exc:
            report.error(name, position, exc.field_name, exc.reason)
            continue
        keys[node.name].update(values)
        raws.append(_Raw(position, node, values))
    for node_name, node_keys in keys.items():
        _note_ignored(report, name, NODES[node_name], node_keys)
    return raws


def _read(name: str, data: bytes, report: ImportReport) -> list[_Raw]:
    """The raw records of one file; errors that stop the file are reported, giving []."""
    try:
        text = _decode(data)
        if not text.strip():
            raise _FileError(0, "empty file")
        lowered = name.lower()
        is_json = lowered.endswith(".json") or (
            not lowered.endswith((".tsv", ".csv", ".txt")) and text.lstrip()[:1] in ("[", "{"))
        return _read_json(name, text, report) if is_json else _read_table(name, text, report)
    except _FileError as exc:
        report.error(name, exc.line, exc.field_name, exc.reason)
        return []


# ---------------------------------------------------------------- validating records

def _case_link(values: dict[str, Any], line: int) -> tuple[object, str]:
    """The case a record links to, and the key it came from: Gen3 TSV columns or JSON forms
    (``"cases": {"submitter_id": ...}``, ``[{...}]``, ``"case_ids": [...]``)."""
    for key in CASE_LINK_COLUMNS:
        value = values.get(key)
        if isinstance(value, list):
            ids: set[object] = {str(v).strip() for v in value if str(v).strip()}
        elif isinstance(value, str):
            ids = {v.strip() for v in value.split(",") if v.strip()}
        else:
            ids = set() if value is None else {value}  # a number: converted as a submitter_id
        if len(ids) > 1:
            raise _FileError(line, f"a record links to one case, not {len(ids)}", key)
        if ids:
            return ids.pop(), key
    linked = values.get("cases")
    if isinstance(linked, list) and len(linked) == 1:
        linked = linked[0]
    if isinstance(linked, dict) and "submitter_id" in linked:
        return linked["submitter_id"], "cases"
    if linked not in (None, "", []):
        raise _FileError(line, 'give {"submitter_id": ...} of one case', "cases")
    raise _FileError(line, "required, but empty", CASE_LINK_COLUMNS[0])


def _validate(name: str, raw: _Raw, report: ImportReport) -> _Record | None:
    node = raw.node
    values: dict[str, object] = {}
    failed: set[str] = set()
    for f in node.fields:
        try:
            value = f.convert(f.raw(raw.values))
        except ValueError as exc:
            report.error(name, raw.line, f.name, str(exc))
            failed.add(f.name)
            continue
        if value is not None:
            values[f.name] = value
    submitter_id = values.get("submitter_id")
    if submitter_id is None and "submitter_id" not in failed:
        report.error(name, raw.line, "submitter_id", "required, but empty")
        failed.add("submitter_id")
    if node is CASE:
        age, over89 = values.get("age_at_index"), values.get("age_at_index_gt89")
        # 89 is allowed with the flag: some exports cap the age at 89 and set it.
        if over89 == "Yes" and isinstance(age, int) and age < 89:
            report.error(name, raw.line, "age_at_index_gt89",
                         f"Yes, but age_at_index is {age}: leave age_at_index empty for ages over 89")
            failed.add("age_at_index_gt89")
    study_uid = values.pop("study_uid", None)
    if study_uid is not None and submitter_id is not None and study_uid != submitter_id:
        report.error(name, raw.line, "study_uid",
                     f"{study_uid!r} differs from submitter_id {submitter_id!r}: an imaging_study's "
                     "submitter_id is its StudyInstanceUID")
        failed.add("study_uid")
    case: str | None = None
    case_field = ""
    if node.links_to_case:
        try:
            value, case_field = _case_link(raw.values, raw.line)
            try:
                case = str(CASE.fields[0].convert(value))
            except ValueError as exc:
                raise _FileError(raw.line, str(exc), case_field) from None
        except _FileError as exc:
            report.error(name, raw.line, exc.field_name, exc.reason)
            failed.add(exc.field_name)
    if failed or not isinstance(submitter_id, str):
        return None
    stored = {f.stored_as: values[f.name] for f in node.fields if f.stored_as and f.name in values}
    if case is not None:
        stored["case_submitter_id"] = case
    return _Record(node, name, raw.line, submitter_id, stored, case, case_field)


# ---------------------------------------------------------------- the import

async def _existing(conn: AsyncConnection, column: Column[Any], keys: Iterable[str]) -> set[str]:
    keys = sorted(set(keys))
    found: set[str] = set()
    for i in range(0, len(keys), _CHUNK):
        rows = await conn.execute(select(column).where(column.in_(keys[i:i + _CHUNK])))
        found.update(rows.scalars())
    return found


def _grouped(records: list[_Record]) -> Iterator[tuple[frozenset[str], list[_Record]]]:
    """Records grouped by the columns they set, for one executemany UPDATE per group."""
    groups: dict[frozenset[str], list[_Record]] = defaultdict(list)
    for r in records:
        groups[frozenset(r.values) - {"submitter_id"}].append(r)
    yield from groups.items()


async def _write(conn: AsyncConnection, node: Node, records: list[_Record], counts: NodeCounts) -> None:
    table = node.table
    now = datetime.now(UTC).replace(tzinfo=None)  # as SQLite's CURRENT_TIMESTAMP: UTC, naive
    existing = await _existing(conn, table.c.submitter_id, (r.submitter_id for r in records))
    new = [r for r in records if r.submitter_id not in existing]
    old = [r for r in records if r.submitter_id in existing]
    if new:
        columns = [f.stored_as for f in node.fields if f.stored_as]
        if node.links_to_case:
            columns.append("case_submitter_id")
        await conn.execute(insert(table), [
            {**{c: r.values.get(c) for c in columns}, "created": now, "updated": now} for r in new])
    for keys, group in _grouped(old):
        # Bind names differ from column names: SQLAlchemy reserves those for its own SET clause.
        stmt = (update(table).where(table.c.submitter_id == bindparam("k_submitter_id"))
                .values({k: bindparam("v_" + k) for k in keys} | {"updated": now}))
        await conn.execute(stmt, [{"k_submitter_id": r.submitter_id,
                                   **{"v_" + k: r.values[k] for k in keys}} for r in group])
    counts.inserted += len(new)
    counts.updated += len(old)


def _prepare(files: list[tuple[str, bytes]], report: ImportReport) -> tuple[list[_Record], set[str]]:
    """Read and validate every row; the valid records, each once, and every case id named."""
    records: list[_Record] = []
    case_ids: set[str] = set()  # of every case row, valid or not: links to them are not "unknown"
    for name, data in files:
        for raw in _read(name, data, report):
            if raw.node is CASE:
                case_ids.add(str(raw.values.get("submitter_id") or "").strip())
            record = _validate(name, raw, report)
            if record is not None:
                records.append(record)
    # The same record twice in one import is a mistake (which one should win?).
    first_seen: dict[tuple[str, str], _Record] = {}
    unique: list[_Record] = []
    for r in records:
        key = (r.node.name, r.submitter_id)
        if key in first_seen:
            seen = first_seen[key]
            report.error(r.file, r.line, "submitter_id",
                         f"duplicate {r.node.name} {r.submitter_id!r}: also at {seen.file} line {seen.line}")
            continue
        first_seen[key] = r
        unique.append(r)
    return unique, case_ids


async def import_clinical(engine: AsyncEngine, files: list[tuple[str, bytes]]) -> ImportReport:
    """Validate ``files`` (name, content) and upsert their records by submitter_id, all in one
    transaction: when the report has any error, nothing was changed."""
    report = ImportReport()
    if not files:
        report.error("", 0, "", "no files")
        return report
    # Reading and validating a site's files is CPU work: off the event loop.
    unique, case_ids = await asyncio.to_thread(_prepare, files, report)

    # One import at a time per engine: two of them could both find a record new and both insert
    # it. Another process (the command line beside the server) can still race: then retry.
    async with _lock(engine):
        for attempt in range(_ATTEMPTS):
            try:
                return await _apply(engine, unique, case_ids, report)
            except IntegrityError:
                # A record was inserted between our look-up and our insert; the transaction rolled
                # back, and the next attempt sees it.
                if attempt == _ATTEMPTS - 1:
                    raise
    raise AssertionError("unreachable")


async def _apply(engine: AsyncEngine, records: list[_Record], in_files: set[str],
                 report: ImportReport) -> ImportReport:
    """Check the links to cases not ``in_files`` against the archive, then write, in one
    transaction."""
    counts = {n: NodeCounts() for n in NODES}
    async with engine.begin() as conn:
        wanted = {r.case for r in records if r.case is not None} - in_files
        known = await _existing(conn, CASE.table.c.submitter_id, wanted)
        for r in records:
            if r.case is not None and r.case not in in_files and r.case not in known:
                report.error(r.file, r.line, r.case_field, f"unknown case {r.case!r}: neither in the files "
                                                           "of this import nor in the archive")
        if not report.ok:
            return report  # nothing written: the transaction ends with no change
        for node in NODES.values():  # cases first: the others refer to them
            await _write(conn, node, [r for r in records if r.node is node], counts[node.name])
    report.counts = counts
    return report


def _lock(engine: AsyncEngine) -> asyncio.Lock:
    lock = _LOCKS.get(engine)
    if lock is None:
        lock = _LOCKS[engine] = asyncio.Lock()
    return lock
