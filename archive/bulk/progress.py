"""The progress of a bulk ingest: files/s, MB/s and the time left, on stderr.

On a terminal it is one line rewritten in place twice a second; otherwise (a log file, a service's
journal) a log line every ``interval`` seconds, with the figures as fields in JSON logs. Rates
count only the files handled in this run (those a resumed run skips take no time); the time left
is the bytes left at the rate of the last half minute.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

log = logging.getLogger("archive.bulk")

_TTY_INTERVAL = 0.5
_WINDOW = 30.0  # seconds of history behind the rate the time left is computed from


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class Progress:
    total_files: int
    total_bytes: int
    stream: TextIO = sys.stderr
    interval: float = 10.0  # seconds between log lines when not on a terminal
    files: int = 0
    bytes: int = 0
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    started: float = field(default_factory=time.monotonic)
    _history: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)

    @property
    def tty(self) -> bool:
        return self.stream.isatty()

    def advance(self, outcome: str, size: int, resumed: bool = False) -> None:
        self.counts[outcome] += 1
        if resumed:  # done by an earlier run: not part of this run's rates
            self.total_files -= 1
            self.total_bytes -= size
            return
        self.files += 1
        self.bytes += size

    def line(self) -> str:
        now = time.monotonic()
        elapsed = max(now - self.started, 1e-6)
        self._history.append((now, self.bytes))
        while len(self._history) > 2 and now - self._history[0][0] > _WINDOW:
            self._history.popleft()
        then, bytes_then = self._history[0]
        recent = (self.bytes - bytes_then) / (now - then) if now - then > 1 else self.bytes / elapsed
        left = self.total_bytes - self.bytes
        eta = _duration(left / recent) if recent > 0 and left > 0 else ("0:00" if left <= 0 else "?")
        counts = ", ".join(f"{name} {self.counts[name]:,}" for name in
                           ("stored", "duplicate", "failed", "skipped") if self.counts[name])
        return (f"{self.files:,}/{self.total_files:,} files, {self.files / elapsed:,.0f} files/s, "
                f"{self.bytes / 1e6 / elapsed:,.1f} MB/s, ETA {eta}" + (f" ({counts})" if counts else ""))

    def show(self, final: bool = False) -> None:
        text = self.line()
        if self.tty:
            self.stream.write(f"\r{text}\x1b[K" + ("\n" if final else ""))
            self.stream.flush()
        else:
            log.info("progress: %s", text, extra={"files": self.files, "total_files": self.total_files,
                                                  "bytes": self.bytes, "total_bytes": self.total_bytes})

    async def run(self) -> None:
        """Show the progress until cancelled."""
        interval = _TTY_INTERVAL if self.tty else self.interval
        while True:
            await asyncio.sleep(interval)
            self.show()
