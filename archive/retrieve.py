"""Retrieve for DIMSE (C-MOVE, C-GET): which stored instances a request covers, and reading one
back as a data set. The same query model as C-FIND picks the instances."""

from __future__ import annotations

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy.ext.asyncio import AsyncEngine

from archive.index.reader import StoredInstance
from archive.query.model import Query
from archive.query.run import matching_instances
from storage.base import BlobStore


class Retriever:
    def __init__(self, engine: AsyncEngine, store: BlobStore) -> None:
        self.engine = engine
        self.store = store

    async def instances(self, query: Query) -> list[StoredInstance]:
        return await matching_instances(self.engine, query)

    def read(self, inst: StoredInstance) -> Dataset:
        """The stored file as a data set (blocking: call from a worker thread, e.g. pynetdicom's).
        pynetdicom sends what it is given, so the whole instance is read; one at a time."""
        with self.store.open_sync(inst.storage_key) as fp:
            return dcmread(fp)
