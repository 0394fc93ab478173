"""Read paths of the index for WADO-RS: which files make up a study/series/instance, their stored
DICOM JSON, and where a bulk data value lives. No file is parsed here."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, Select, bindparam, case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from archive.auth import PUBLIC, Visibility
from archive.dicom import procedure
from archive.index.schema import instances, patients, series, studies


@dataclass(frozen=True)
class StoredInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    size: int


def _scope(stmt: Select, study: str, series_uid: str | None, sop: str | None,
           visible: Visibility) -> Select:
    stmt = stmt.where(studies.c.study_uid == study,
                      patients.c.release_state.in_(sorted(visible.states)))
    if series_uid is not None:
        stmt = stmt.where(series.c.series_uid == series_uid)
    if sop is not None:
        stmt = stmt.where(instances.c.sop_uid == sop)
    return stmt


# The columns of a StoredInstance, in its field order.
_STORED = (studies.c.study_uid, series.c.series_uid, instances.c.sop_uid, instances.c.sop_class_uid,
           instances.c.transfer_syntax_uid, instances.c.storage_key, instances.c.size)
# Every read joins the patient: its release state decides who may see the instances.
_FROM = instances.join(series, instances.c.series_pk == series.c.pk).join(
    studies, series.c.study_pk == studies.c.pk).join(patients, studies.c.patient_pk == patients.c.pk)
_ORDER = (series.c.series_number, series.c.pk, instances.c.instance_number, instances.c.pk)


@dataclass(frozen=True)
class PixelSource:
    """An instance with where its pixel data lies (``PixelInfo.to_dict()`` of ingest, or None
    when it has none) and its stored DICOM JSON (BulkDataURIs still tokenized)."""

    instance: StoredInstance
    pixel: dict[str, Any] | None
    meta: dict[str, Any]


def _instances_stmt(by_series: bool, by_sop: bool, *extra: Any) -> Select:
    stmt = select(*_STORED, *extra).select_from(_FROM)
    stmt = stmt.where(studies.c.study_uid == bindparam("study"),
                      patients.c.release_state.in_(bindparam("states", expanding=True)))
    if by_series:
        stmt = stmt.where(series.c.series_uid == bindparam("series"))
    if by_sop:
        stmt = stmt.where(instances.c.sop_uid == bindparam("sop"))
    return stmt.order_by(*_ORDER)


# Built once: every frame, rendered and retrieve request looks its instances up this way, and
# building the statement cost more CPU than running it.
_INSTANCES = {(a, b): _instances_stmt(a, b) for a in (False, True) for b in (False, True)}
# One instance with what serving its frames needs, for the frame requests of a viewer: its pixel
# data position and stored JSON come along when small (a slice's: a few kB), so a viewer's first
# request for a file takes one query; large ones (a multi-frame instance's fragments and
# per-frame groups) are left out and fetched by key only when the caller has not seen the file.
_INLINE = 8 << 10
_FRAME_SOURCE = _instances_stmt(
    True, True, instances.c.pk, instances.c.number_of_frames,
    case((func.length(instances.c.pixel) <= _INLINE, instances.c.pixel), else_=None).label("pixel"),
    func.length(instances.c.pixel).label("pixel_length"),
    case((func.length(instances.c.meta_json) <= _INLINE, instances.c.meta_json), else_=None).label("meta"))
_FRAME_BLOBS = select(instances.c.pixel, instances.c.meta_json).where(instances.c.pk == bindparam("pk"))


@dataclass(frozen=True)
class FrameSource:
    """An instance the caller may see, for a frame request. Its pixel data position and stored
    DICOM JSON are decoded (:meth:`IndexReader.frame_pixels`) only by a caller that has not seen
    this file before (storage keys are unique per write)."""

    instance: StoredInstance
    pk: int
    frames: int
    pixel_text: str | None  # None: no pixel data, or too large to come inline
    pixel_length: int
    meta_blob: bytes | None  # None: too large to come inline

    @property
    def small(self) -> bool:
        """Everything came inline, and decodes in well under a millisecond (one frame)."""
        inline = self.meta_blob is not None and (self.pixel_text is not None or not self.pixel_length)
        return inline and self.frames <= 1


def _decode_pixel_source(instance: StoredInstance, pixel_text: str | None, meta_blob: bytes) -> PixelSource:
    return PixelSource(instance, json.loads(pixel_text) if pixel_text else None,
                       procedure.fill(json.loads(zlib.decompress(meta_blob))))


def _pixel_sources(rows: Sequence[Row[Any]]) -> list[PixelSource]:
    return [PixelSource(StoredInstance(*row[:7]), json.loads(row.pixel) if row.pixel else None,
                        procedure.fill(json.loads(zlib.decompress(row.meta_json))))
            for row in rows]


class IndexReader:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def instances(self, study: str, series_uid: str | None = None, sop: str | None = None,
                        visible: Visibility = PUBLIC) -> list[StoredInstance]:
        stmt = _INSTANCES[(series_uid is not None, sop is not None)]
        params = {"study": study, "series": series_uid, "sop": sop, "states": sorted(visible.states)}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt, params)).all()
        return [StoredInstance(*row) for row in rows]

    async def frame_source(self, study: str, series_uid: str, sop: str,
                           visible: Visibility = PUBLIC) -> FrameSource | None:
        """One instance for a frame request, access checked, in one query (see _FRAME_SOURCE)."""
        params = {"study": study, "series": series_uid, "sop": sop, "states": sorted(visible.states)}
        async with self.engine.connect() as conn:
            row = (await conn.execute(_FRAME_SOURCE, params)).first()
        if row is None:
            return None
        return FrameSource(StoredInstance(*row[:7]), row.pk, max(1, row.number_of_frames or 1),
                           row.pixel, row.pixel_length or 0, row.meta)

    async def frame_pixels(self, found: FrameSource) -> PixelSource:
        """The decoded pixel position and JSON of a :meth:`frame_source` result: inline ones of
        a single frame on the loop, the rest fetched (by key) and decoded in a thread."""
        if found.small:
            assert found.meta_blob is not None
            return _decode_pixel_source(found.instance, found.pixel_text, found.meta_blob)
        async with self.engine.connect() as conn:
            row = (await conn.execute(_FRAME_BLOBS, {"pk": found.pk})).one()
        return await asyncio.to_thread(_decode_pixel_source, found.instance, row.pixel, row.meta_json)

    async def metadata(self, study: str, series_uid: str | None = None, sop: str | None = None,
                       batch: int = 500, visible: Visibility = PUBLIC) -> AsyncIterator[bytes]:
        """The DICOM JSON of each instance (UTF-8, with the base URL token), streamed: as stored,
        with the study's harmonized procedure code in place (archive.dicom.procedure)."""
        stmt = _scope(select(instances.c.meta_json, studies.c.loinc_code, studies.c.loinc_name)
                      .select_from(_FROM), study, series_uid, sop, visible)
        stmt = stmt.order_by(*_ORDER).execution_options(yield_per=batch)
        item: bytes | None = None
        first = True
        async with self.engine.connect() as conn:
            result = await conn.stream(stmt)
            async for blob, code, name in result:
                if first:  # one study: one item
                    item, first = procedure.item_bytes(code, name), False
                yield procedure.fill_text(zlib.decompress(blob), item)

    async def bulk(self, study: str, series_uid: str, sop: str, path: str,
                   visible: Visibility = PUBLIC) -> tuple[StoredInstance, list[int | None]] | None:
        """The instance and ``[offset|None, length]`` of one bulk value, if it exists."""
        stmt = _scope(select(*_STORED, instances.c.bulk)
                      .select_from(_FROM), study, series_uid, sop, visible)
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        ref = json.loads(row.bulk).get(path)
        if ref is None:
            return None
        return StoredInstance(*row[:7]), ref

    async def pixel_source(self, study: str, series_uid: str | None, sop: str | None,
                           visible: Visibility = PUBLIC) -> list[PixelSource]:
        """Instances in scope with their pixel data positions and DICOM JSON, in retrieve order."""
        stmt = _scope(select(*_STORED, instances.c.pixel, instances.c.meta_json).select_from(_FROM),
                      study, series_uid, sop, visible)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt.order_by(*_ORDER))).all()
        if sum(len(row.meta_json) for row in rows) <= 16 << 10:
            return _pixel_sources(rows)
        # Inflating and parsing the JSON of a series, or of one enhanced multi-frame instance
        # with per-frame functional groups, takes tens of ms: not on the loop.
        return await asyncio.to_thread(_pixel_sources, rows)

    async def image_rows(self, study: str, series_uid: str | None, sop: str | None,
                         visible: Visibility = PUBLIC) -> list[tuple[StoredInstance, int, int]]:
        """Instances in scope with their indexed Rows (0: none, not an image) and Number of
        Frames (at least 1), in retrieve order: what rendering needs to pick instances and
        frames without reading any stored metadata."""
        stmt = _scope(select(*_STORED, instances.c.rows, instances.c.number_of_frames).select_from(_FROM),
                      study, series_uid, sop, visible)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt.order_by(*_ORDER))).all()
        return [(StoredInstance(*row[:7]), row[7] or 0, max(1, row[8] or 1))
                for row in rows]
