"""What a bulk ingest reads: the files of folders (recursive), the members of zip files, and the
files a DICOMDIR references (PS3.10 §8, PS3.3 F.3: Referenced File ID, a path relative to the
DICOMDIR's folder).

:func:`scan` lists every candidate up front (blocking: run it in a thread), so that the progress
line knows the total and a resumed run can skip what is done without opening anything. A candidate
is an :class:`Item`; one that cannot be ingested at all (an unreadable zip, a file a DICOMDIR names
but that is missing) carries its verdict in ``note`` and is reported without being opened.
"""

from __future__ import annotations

import os
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread

DICOMDIR = "DICOMDIR"
# Names that say "DICOM" even without the Part 10 'DICM' prefix: refused as failures, not skipped.
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_ZIP_ENCRYPTED = 0x1


class SourceError(Exception):
    """A path given on the command line that is neither a folder nor a file."""


@dataclass(frozen=True, slots=True)
class Item:
    """One file to ingest: a file on disk, or a member of a zip file (``member``)."""

    path: str  # the file, or the zip file holding it
    size: int  # bytes (a member's: uncompressed)
    mtime_ns: int  # of the file, or of the zip file
    member: str | None = None
    container_size: int = 0  # the zip file's size (part of a member's identity)
    # The file is meant to be DICOM (a DICOMDIR names it, or its name ends in .dcm): without
    # a Part 10 header it fails rather than being skipped as "not DICOM".
    expect_dicom: bool = False
    note: tuple[str, str] | None = None  # (outcome, reason) decided without opening it

    @property
    def key(self) -> str:
        """What a resumed run recognizes it by: path, size and modification time."""
        if self.member is None:
            return f"{self.path}\t{self.size}\t{self.mtime_ns}"
        return f"{self.path}\t{self.container_size}\t{self.mtime_ns}\t{self.member}"

    @property
    def label(self) -> str:
        return self.path if self.member is None else f"{self.path}!{self.member}"



class Opener:
    """Opens items' streams (blocking calls, for threads). Each zip file is opened once and its
    members are read from it as streams, never extracted to disk; zipfile's reads of members
    share the file under its own lock, but opening and closing them count references without
    one, hence this lock."""

    def __init__(self) -> None:
        self._zips: dict[str, zipfile.ZipFile] = {}
        self._lock = threading.Lock()

    def open(self, item: Item) -> BinaryIO:
        if item.member is None:
            return open(item.path, "rb")
        with self._lock:
            archive = self._zips.get(item.path)
            if archive is None:
                archive = self._zips[item.path] = zipfile.ZipFile(item.path)
            return archive.open(item.member)

    def close(self, stream: BinaryIO) -> None:
        with self._lock:
            stream.close()

    def close_all(self) -> None:
        with self._lock:
            for archive in self._zips.values():
                archive.close()
            self._zips.clear()


def _dicom_name(name: str) -> bool:
    return name.lower().endswith(DICOM_SUFFIXES)


def _file_item(path: Path, st: os.stat_result | None = None, expect_dicom: bool = False) -> Item:
    st = st or path.stat()
    return Item(os.fsdecode(path), st.st_size, st.st_mtime_ns,
                expect_dicom=expect_dicom or _dicom_name(path.name))


def _noted(path: Path, outcome: str, reason: str) -> Item:
    try:
        st = path.stat()
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size = mtime = 0
    return Item(os.fsdecode(path), size, mtime, note=(outcome, reason))


def zip_items(path: Path) -> Iterator[Item]:
    """The members of a zip file (folders left out); its own problems as noted items."""
    try:
        st = path.stat()
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        yield _noted(path, "failed", f"unreadable zip file: {exc}")
        return
    for info in infos:
        if info.is_dir():
            continue
        base = Item(os.fsdecode(path), info.file_size, st.st_mtime_ns, info.filename, st.st_size,
                    expect_dicom=_dicom_name(info.filename))
        name = info.filename.rsplit("/", 1)[-1]
        if info.flag_bits & _ZIP_ENCRYPTED:
            yield _with_note(base, "failed", "encrypted zip member")
        elif name.upper() == DICOMDIR:
            yield _with_note(base, "skipped", "a DICOMDIR (the files it names are in the zip file)")
        elif name.lower().endswith(".zip"):
            yield _with_note(base, "skipped", "a zip file inside a zip file is not opened")
        else:
            yield base


def _with_note(item: Item, outcome: str, reason: str) -> Item:
    return Item(item.path, item.size, item.mtime_ns, item.member, item.container_size, item.expect_dicom,
                (outcome, reason))


def _find_case_insensitive(folder: Path, parts: list[str]) -> Path | None:
    """Media written on one system and copied to another may not keep the upper case of the File
    IDs (PS3.10 §8.2 allows only upper-case letters): find each component ignoring case."""
    path = folder
    for part in parts:
        exact = path / part
        if exact.exists():
            path = exact
            continue
        try:
            match = next((p for p in path.iterdir() if p.name.upper() == part.upper()), None)
        except OSError:
            return None
        if match is None:
            return None
        path = match
    return path


def dicomdir_items(path: Path) -> Iterator[Item]:
    """The files a DICOMDIR references, in its record order."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
        records = list(ds.get("DirectoryRecordSequence", []))
    except Exception as exc:  # pydicom raises many types on a broken file
        yield _noted(path, "failed", f"unreadable DICOMDIR: {type(exc).__name__}: {exc}"[:300])
        return
    seen: set[str] = set()
    for record in records:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [str(p) for p in file_id] if not isinstance(file_id, str) else [file_id]
        found = _find_case_insensitive(path.parent, parts)
        if found is None:
            missing = path.parent.joinpath(*parts)
            yield _noted(missing, "failed", f"named by {path.name} but not found")
            continue
        if os.fsdecode(found) in seen:
            continue
        seen.add(os.fsdecode(found))
        yield _file_item(found, expect_dicom=True)


def folder_items(root: Path) -> Iterator[Item]:
    """Every file below ``root`` (symbolic links to folders not followed), in name order; zip
    files are opened, DICOMDIR files skipped (the files they name are in the folder anyway)."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            try:
                st = path.stat()
            except OSError as exc:
                yield _noted(path, "failed", f"cannot read: {exc.strerror}")
                continue
            if not os.path.isfile(path):  # a socket, a fifo, a dangling link
                continue
            yield from _file_or_container(path, st, in_folder=True)


def _file_or_container(path: Path, st: os.stat_result, in_folder: bool) -> Iterator[Item]:
    if path.name.upper() == DICOMDIR:
        if in_folder:
            yield _noted(path, "skipped", "a DICOMDIR (the files it names are in the folder)")
        else:
            yield from dicomdir_items(path)
    elif path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        yield from zip_items(path)
    else:
        yield _file_item(path, st)


def scan(paths: list[Path]) -> list[Item]:
    """Every candidate of the given folders, zip files, DICOMDIRs and files (blocking)."""
    items: list[Item] = []
    for given in paths:
        path = Path(os.path.abspath(given))  # keys that do not depend on the working folder
        if path.is_dir():
            items.extend(folder_items(path))
        elif path.is_file():
            items.extend(_file_or_container(path, path.stat(), in_folder=False))
        else:
            raise SourceError(f"{path}: no such file or folder")
    return items
