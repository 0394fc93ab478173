"""The server process's own temporary folder.

Worker pools (the parse and codec processes) use ``multiprocessing``'s forkserver, which puts a
listening socket in a fresh ``pymp-*`` folder of the system's temporary area and removes it at a
clean exit. A server that is killed (SIGKILL, out of memory, power cut) leaves it behind for
good. Pointing the process's temporary folder at one named after the storage folder and the
process id lets the next start remove what dead processes left, and nothing of a live one (two
servers may share a storage folder).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

log = logging.getLogger("archive.runtime")


# A socket path holds at most 107 bytes; below the folder come "/<pid>/pymp-xxxxxxxx/listener-xxxxxxxx".
_MAX_PARENT = 107 - 48


def use_private_tempdir(storage_path: Path) -> Path | None:
    """Make ``<tmp>/ia-<digest>/<pid>`` this process's temporary folder, after removing the
    folders of processes that no longer run; None (nothing changed) when the parent folder
    belongs to another user or its name is too long for a socket path below it."""
    digest = hashlib.sha256(str(Path(storage_path).resolve()).encode()).hexdigest()[:12]
    parent = Path(tempfile.gettempdir()) / f"ia-{digest}"
    if len(str(parent)) > _MAX_PARENT:
        log.info("temporary folder %s: name too long for worker-pool sockets; not used", parent)
        return None
    parent.mkdir(mode=0o700, exist_ok=True)
    st = parent.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        log.warning("not using %s for temporary files: not a folder of this user", parent)
        return None
    removed = 0
    for entry in parent.iterdir():
        if entry.name.isdigit() and _running(int(entry.name)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.warning("start-up: removed the temporary files of %d stopped server process(es)", removed)
    own = parent / str(os.getpid())
    own.mkdir(mode=0o700, exist_ok=True)
    tempfile.tempdir = str(own)
    return own


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
