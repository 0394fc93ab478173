"""The archive opened in this process for an operator command: the same ingest pipeline, index and
storage that ``serve`` opens (the cleanup context of :func:`archive.app.create_app`), with neither
the HTTP nor the DIMSE listener. So bulk ingest and ``verify --repair`` store and index exactly as
STOW-RS and C-STORE do (de-identification, harmonization, release states included), and run beside
a serving archive on the same index and storage (writers of several processes wait for each other).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from archive import keys
from archive.app import create_app
from archive.config import Config
from archive.ingest import Ingest
from archive.runtime import use_private_tempdir
from storage.base import BlobStore


@dataclass(frozen=True)
class Archive:
    cfg: Config
    ingest: Ingest
    store: BlobStore
    engine: AsyncEngine


@asynccontextmanager
async def open_archive(cfg: Config, parse_processes: int | None = None) -> AsyncIterator[Archive]:
    """The archive's resources, started (leftovers of interrupted runs cleaned, as at a server's
    start) and closed on exit. ``parse_processes`` overrides ``[ingest] parse_processes``."""
    ingest_cfg = cfg.ingest if parse_processes is None else dataclasses.replace(
        cfg.ingest, parse_processes=parse_processes)
    cfg = dataclasses.replace(cfg, dimse=dataclasses.replace(cfg.dimse, enabled=False), ingest=ingest_cfg)
    # As a server does: worker pools' sockets in a folder the next start cleans after a kill.
    use_private_tempdir(cfg.storage_path)
    runner = web.AppRunner(create_app(cfg), handle_signals=False)
    await runner.setup()  # no site: nothing listens
    try:
        app = runner.app
        yield Archive(cfg, app[keys.INGEST], app[keys.STORE], app[keys.ENGINE])
    finally:
        await runner.cleanup()
