"""The resume state of a bulk ingest: one JSON line per file whose fate is known, keyed by path,
size and modification time (:attr:`archive.bulk.sources.Item.key`).

A line is written only once the file's instance is committed to the index (or the file was
skipped or failed), in batches that are flushed and fsynced together, so after a crash or a kill
the state never claims more than was done; what was done but not yet written is ingested again
and found identical (the index keeps one copy). A re-run skips the files whose outcome was
stored, replaced, duplicate or skipped, and tries the failed ones again (the cause, a full disk
say, may be gone). The last line may be cut short by a kill: it is ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("archive.bulk")

DONE = frozenset({"stored", "replaced", "duplicate", "skipped"})
_FLUSH_LINES = 500
_FLUSH_SECONDS = 1.0


class ResumeState:
    def __init__(self, path: Path, entries: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self.entries = entries  # key -> entry, from earlier runs and this one
        self._pending: list[str] = []
        self._last_flush = time.monotonic()
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, restart: bool = False) -> ResumeState:
        """The state at ``path`` (made if missing); ``restart`` forgets earlier runs."""
        entries = await asyncio.to_thread(_load, path, restart)
        if entries:
            log.info("resuming: %d file(s) known from earlier runs (%s)", len(entries), path,
                     extra={"state_file": str(path)})
        return cls(path, entries)

    def done(self, key: str) -> dict[str, Any] | None:
        """The entry of an earlier run when it needs no new attempt."""
        entry = self.entries.get(key)
        return entry if entry is not None and entry.get("outcome") in DONE else None

    async def record(self, entry: dict[str, Any]) -> None:
        self.entries[entry["key"]] = entry
        self._pending.append(json.dumps(entry, separators=(",", ":")))
        if len(self._pending) >= _FLUSH_LINES or time.monotonic() - self._last_flush >= _FLUSH_SECONDS:
            await self.flush()

    async def flush(self) -> None:
        """Append the pending lines durably (write, fsync), off the event loop."""
        async with self._lock:
            lines, self._pending = self._pending, []
            self._last_flush = time.monotonic()
            if lines:
                await asyncio.to_thread(_append, self.path, lines)


def _load(path: Path, restart: bool) -> dict[str, dict[str, Any]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    if restart:
        path.unlink(missing_ok=True)
    entries: dict[str, dict[str, Any]] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:  # the line a kill cut short
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    entries[entry["key"]] = entry
    except FileNotFoundError:
        return entries
    with open(path, "rb+") as f:  # end a line cut short, so the next run's lines stay whole
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")
    return entries


def _append(path: Path, lines: list[str]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
