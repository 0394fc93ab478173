"""Study and series retrieve as one zip file (``Accept: application/zip``, PS3.18 §8.7.3.1 lists
application/zip among the retrieve media types; dcm4chee and Orthanc offer it for downloads).

The zip is written as it is sent: each Part 10 file is copied from storage in chunks into a
stored (uncompressed) zip entry followed by a data descriptor, so neither the archive nor the
files are built in memory or on disk first. DICOM pixel data is mostly compressed or noise-like;
deflating it would cost CPU for little gain, so entries are stored as they are.

Layout, predictable from the index: ``{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm``.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable

from aiohttp import web

from archive import keys
from archive.dicomweb.media import parse_accept
from archive.index.reader import StoredInstance
from storage.base import BlobStore

ZIP = "application/zip"


def wants_zip(request: web.Request) -> bool:
    """True when the best-ranked acceptable media type is application/zip (an explicit ask: a
    wildcard Accept keeps the default multipart/related response)."""
    ranges = [r for r in parse_accept(request.headers.get("Accept")) if r.q > 0]
    return bool(ranges) and ranges[0].type == ZIP


class _Sink:
    """A write-only, unseekable file for :class:`zipfile.ZipFile`: it then writes data
    descriptors after each entry instead of seeking back to patch the local header."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def entry_name(inst: StoredInstance) -> str:
    return f"{inst.study_uid}/{inst.series_uid}/{inst.sop_uid}.dcm"


Instances = Iterable[StoredInstance] | AsyncIterable[StoredInstance]


async def _each(found: Instances) -> AsyncIterator[StoredInstance]:
    if isinstance(found, AsyncIterable):
        async for inst in found:
            yield inst
    else:
        for inst in found:
            yield inst


async def stream_zip(request: web.Request, found: Instances, filename: str) -> web.StreamResponse:
    """Send ``found`` as a zip download; memory holds one storage chunk at a time. ``found`` may
    be produced while the zip is sent (a cohort's instances, read study by study)."""
    store: BlobStore = request.app[keys.STORE]
    response = web.StreamResponse(headers={
        "Content-Type": ZIP,
        "Content-Disposition": f'attachment; filename="{filename}.zip"'})
    await response.prepare(request)
    sink = _Sink()
    stamp = time.localtime()[:6]
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        async for inst in _each(found):
            info = zipfile.ZipInfo(entry_name(inst), date_time=stamp)
            info.file_size = inst.size
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=inst.size >= 0x7FFFFFFF) as entry:
                await response.write(sink.take())
                async for chunk in store.open_range(inst.storage_key):
                    entry.write(chunk)
                    await response.write(sink.take())
            await response.write(sink.take())
    await response.write(sink.take())  # the central directory, written on close
    await response.write_eof()
    return response
