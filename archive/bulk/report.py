"""The outcome of a bulk ingest: the summary printed at the end and the JSON report (``--report``).

Each file's entry (also a line of the resume state) holds ``key``, ``file``, ``outcome``
(``stored``, ``replaced``, ``duplicate``: the same data set was stored already, ``failed``,
``skipped``: not a DICOM file), ``status`` (the PS3.4 status as ``0xC000``, ``0x0000`` when it
succeeded), ``reason``, ``bytes`` and the instance's ``sop_uid``, ``study_uid`` and ``series_uid``
when known. The report lists every file of the command's paths, those done by an earlier run with
``"resumed": true``, and totals.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

OUTCOMES = ("stored", "replaced", "duplicate", "failed", "skipped")
_REASON_MAX = 160


def reason_group(entry: dict[str, Any]) -> str:
    """What files with the same problem share: the status and the start of the reason."""
    reason = str(entry.get("reason") or "")[:_REASON_MAX]
    status = entry.get("status")
    return f"{status} {reason}" if status and status != "0x0000" else reason


@dataclass
class Summary:
    paths: list[str]
    state_file: str
    started: float = field(default_factory=time.time)
    clock: float = field(default_factory=time.monotonic)
    entries: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False

    def add(self, entry: dict[str, Any], resumed: bool = False) -> None:
        """Count a file's entry; the same dict the resume state holds (no copy per file)."""
        if resumed:
            entry["resumed"] = True
        self.entries.append(entry)

    def counts(self) -> Counter[str]:
        return Counter(e["outcome"] for e in self.entries)

    def groups(self, outcome: str) -> Counter[str]:
        return Counter(reason_group(e) for e in self.entries if e["outcome"] == outcome)

    def totals(self) -> dict[str, Any]:
        seconds = time.monotonic() - self.clock
        counts = self.counts()
        fresh = [e for e in self.entries if not e.get("resumed")]
        fresh_bytes = sum(int(e.get("bytes") or 0) for e in fresh)
        return {"files": len(self.entries), "bytes": sum(int(e.get("bytes") or 0) for e in self.entries),
                **{name: counts[name] for name in OUTCOMES},
                "resumed": len(self.entries) - len(fresh), "processed": len(fresh),
                "seconds": round(seconds, 3),
                "files_per_s": round(len(fresh) / seconds, 1) if seconds else 0.0,
                "mb_per_s": round(fresh_bytes / 1e6 / seconds, 2) if seconds else 0.0}

    @property
    def failed(self) -> int:
        return self.counts()["failed"]

    def to_json(self) -> dict[str, Any]:
        return {"paths": self.paths, "state_file": self.state_file,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "interrupted": self.interrupted, "totals": self.totals(),
                "failures": dict(self.groups("failed").most_common()),
                "skipped": dict(self.groups("skipped").most_common()),
                "files": self.entries}

    def write(self, path: Path) -> None:
        """The JSON report, replaced atomically (blocking); one file's entry per line. Each part
        is encoded by ``json.dumps`` without indentation, the C encoder (``json.dump`` and any
        indentation take the pure-Python one: seconds for a large import)."""
        doc = self.to_json()
        files = doc.pop("files")
        head = json.dumps(doc)[:-1]  # without its closing brace: "files" comes last
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(head + ', "files": [\n')
            f.write(",\n".join(json.dumps(entry) for entry in files))
            f.write("\n]}\n")
        os.replace(tmp, path)

    def print(self, out: TextIO) -> None:
        t = self.totals()
        head = "interrupted" if self.interrupted else "done"
        out.write(f"{head}: {t['files']:,} files ({t['bytes'] / 1e6:,.1f} MB): {t['stored']:,} stored, "
                  f"{t['replaced']:,} replaced, {t['duplicate']:,} duplicates (stored already), "
                  f"{t['failed']:,} failed, {t['skipped']:,} skipped; {t['resumed']:,} done by an "
                  f"earlier run\n")
        out.write(f"{t['processed']:,} files in {t['seconds']:.1f} s: {t['files_per_s']:,.1f} files/s, "
                  f"{t['mb_per_s']:,.1f} MB/s\n")
        for outcome in ("failed", "skipped"):
            groups = self.groups(outcome)
            if groups:
                out.write(f"{outcome}, by reason:\n")
                for reason, n in groups.most_common():
                    out.write(f"  {n:>7,}  {reason}\n")
        out.write(f"resume state: {self.state_file}\n")
