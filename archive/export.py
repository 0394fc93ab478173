"""``imaging-archive export COHORT_ID DIR``: a saved cohort's instances as DICOM files, as stored,
under ``DIR/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm``, and its manifest as
``DIR/manifest.json`` (the JSON manifest of ``GET /api/cohorts/{id}/manifest``, archive.cohorts).

The operator's command: every release state is exported. Files are copied through the BlobStore
(any backend), a few at once, each written under a temporary name and renamed when complete, so an
interrupted export leaves no partial file; run again, it skips the files already there whole.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from archive.auth import ALL
from archive.bulk.resources import Archive
from archive.cohorts import manifest, store
from archive.cohorts.cli import write_manifest
from archive.cohorts.query import study_pks
from archive.dicom.uids import is_valid_uid
from archive.index.reader import StoredInstance
from storage.base import BlobStore, StorageError

MANIFEST = "manifest.json"
_JOBS = 4


class ExportError(Exception):
    """No such cohort, or the output folder cannot be used."""


@dataclass
class Exported:
    instances: int = 0
    bytes: int = 0
    skipped: int = 0  # already there, whole, from an earlier run
    failed: list[str] = field(default_factory=list)  # SOP Instance UIDs whose file could not be copied


def instance_path(out: Path, inst: StoredInstance) -> Path:
    uids = (inst.study_uid, inst.series_uid, inst.sop_uid)
    if not all(is_valid_uid(u) for u in uids):  # checked at ingest; a path must never get anything else
        raise ExportError(f"not a valid UID in {uids}")
    return out / inst.study_uid / inst.series_uid / f"{inst.sop_uid}.dcm"


def _copy(store: BlobStore, inst: StoredInstance, target: Path) -> bool:
    """Copy one blob to ``target`` (blocking); False when it is there whole already."""
    if target.is_file() and target.stat().st_size == inst.size:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    with store.open_sync(inst.storage_key) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, target)
    return True


async def export_cohort(archive: Archive, cohort_id: str, out: Path, base_url: str,
                        jobs: int = _JOBS) -> Exported:
    saved = await store.get(archive.engine, cohort_id)
    if saved is None:
        raise ExportError(f"no saved cohort {cohort_id!r} (imaging-archive cohort list)")
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    filters = saved.parsed()
    header = {**saved.to_json(), "filters": filters.to_json(), "dicomweb": base_url}
    await write_manifest(archive.engine, filters, out / MANIFEST, base_url, header)
    pks = await study_pks(archive.engine, filters, ALL)
    result = Exported()
    queue: asyncio.Queue[StoredInstance | None] = asyncio.Queue(maxsize=4 * jobs)

    async def copier() -> None:
        while (inst := await queue.get()) is not None:
            try:
                copied = await asyncio.to_thread(_copy, archive.store, inst, instance_path(out, inst))
            except (OSError, StorageError, ExportError):  # a missing or unreadable object
                result.failed.append(inst.sop_uid)
                continue
            result.instances += 1
            result.bytes += inst.size
            result.skipped += not copied

    workers = [asyncio.create_task(copier()) for _ in range(jobs)]
    try:
        async for inst in manifest.instances_of(archive.engine, pks):
            await queue.put(inst)
    finally:
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    return result
