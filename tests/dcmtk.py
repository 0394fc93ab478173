"""dcmtk's command-line tools as the PACS in tests (Debian package ``dcmtk``).

pynetdicom installs console scripts of the same names (storescu, findscu, ...), which may come
first on PATH; :func:`tool` finds dcmtk's own binary. A missing dcmtk skips the test on a
developer's machine and fails it under CI (CI=true), as the developers' guide asks.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.samples import IN_CI

_DIRS = (Path("/usr/bin"), Path("/usr/local/bin"))


def _is_dcmtk(path: Path) -> bool:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "dcmtk" in (out.stdout + out.stderr).lower()


def find(name: str) -> Path | None:
    candidates = [d / name for d in _DIRS]
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and _is_dcmtk(path):
            return path
    return None


def tool(name: str) -> str:
    """Absolute path of dcmtk's ``name``; skip (or, under CI, fail) when dcmtk is missing."""
    path = find(name)
    if path is None:
        message = f"dcmtk's {name} is not installed (Debian package dcmtk)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return str(path)
