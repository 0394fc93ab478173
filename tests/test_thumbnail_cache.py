"""Thumbnail cache: half-written ``.tmp-*`` files a killed server left are removed at start-up
(issue 5); whole thumbnails stay."""

from __future__ import annotations

from pathlib import Path

from archive.app import create_app
from archive.pixels.cache import ThumbnailCache
from tests.conftest import make_config


async def test_stale_temp_files_are_removed_at_start_up(aiohttp_client, tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    cache = ThumbnailCache(cfg.thumbnail_cache_path)
    key = cache.key("some", "thumbnail")
    cache.put(key, b"jpeg bytes")
    folder = cache.path(key).parent
    stale = [folder / ".tmp-abc123", cache.root / "ff" / ".tmp-killed"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a thumbn")
    await aiohttp_client(create_app(cfg))  # start-up runs
    assert not any(p.exists() for p in stale)
    assert cache.get(key) == b"jpeg bytes"


async def test_no_cache_folder_yet_is_fine(aiohttp_client, tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    assert not cfg.thumbnail_cache_path.exists()
    client = await aiohttp_client(create_app(cfg))
    assert (await client.get("/healthz")).status == 200
    assert ThumbnailCache(tmp_path / "nowhere").remove_temp_files() == 0
