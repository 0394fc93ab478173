"""Typed keys of the resources the application holds (aiohttp ``AppKey``s)."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from archive.config import Config
from archive.index.reader import IndexReader
from archive.ingest import Ingest
from archive.pixels.codecpool import CodecPool
from storage.base import BlobStore

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", BlobStore)
ENGINE = web.AppKey("engine", AsyncEngine)
READER = web.AppKey("reader", IndexReader)
INGEST = web.AppKey("ingest", Ingest)
CODECS = web.AppKey("codecs", CodecPool)
