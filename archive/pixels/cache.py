"""Rendered thumbnails kept on disk, one file per key (PS3.18 §10.4.1.1.5 thumbnails are asked for
again and again by viewers' study and series lists).

A key is the SHA-256 of everything that determines the image: the stored file (its storage key,
unique per write, and size), the frame, the media type and the rendering parameters. A replaced
instance has another storage key, so it can never be served an old thumbnail. Files are written
to a temporary name, fsynced, then renamed: a reader sees a whole file or none. Nothing is
evicted; the folder can be deleted at any time. All methods block: run them in an executor.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("archive.render")


class ThumbnailCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def key(*parts: object) -> str:
        return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def remove_temp_files(self) -> int:
        """Delete the ``.tmp-*`` files a killed server left half-written (call at start-up, when
        no write is in progress); returns how many."""
        removed = 0
        try:
            folders = [d for d in self.root.iterdir() if d.is_dir()]
        except OSError:  # no cache yet
            return 0
        for folder in folders:
            try:
                leftovers = list(folder.glob(".tmp-*"))
            except OSError:
                continue
            for tmp in leftovers:
                try:
                    tmp.unlink()
                    removed += 1
                except OSError as exc:
                    log.warning("thumbnail cache: cannot remove %s: %s", tmp, exc)
        return removed

    def get(self, key: str) -> bytes | None:
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("thumbnail cache: cannot read %s: %s", key, exc)
            return None
        return data or None

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically; a failure is logged, never raised (the
        thumbnail was rendered and is served anyway)."""
        target = self.path(key)
        tmp: str | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # so that a power cut cannot leave a renamed empty file
            os.replace(tmp, target)
            tmp = None
        except OSError as exc:
            log.warning("thumbnail cache: cannot write %s: %s", target, exc)
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
