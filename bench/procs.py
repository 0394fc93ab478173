"""Subprocesses the benchmark starts (the archive server, the plain file server) and RSS sampling.

``ManagedProcess`` starts a command with its output in a log file, waits for its health URL to
answer 200, and stops it (SIGTERM, then SIGKILL after a grace period) by its own pid only.
``RssSampler`` samples the resident set size of a process and all its children every ~50 ms in a
thread and keeps the peak overall and per named phase.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import psutil
import requests


class ProcessError(RuntimeError):
    """A managed process did not come up, or died."""


class ManagedProcess:
    def __init__(self, name: str, argv: list[str], cwd: Path, log_path: Path, health_url: str) -> None:
        self.name, self.argv, self.cwd = name, argv, cwd
        self.log_path, self.health_url = log_path, health_url
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ProcessError(f"{self.name} is not started")
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProcessError(f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                                   f"{self.log_tail()}")
            if self._healthy():
                return
            time.sleep(0.2)
        self.stop()
        raise ProcessError(f"{self.name} not ready after {timeout:.0f} s ({self.health_url}):\n"
                           f"{self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            return requests.get(self.health_url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``grace`` s, then SIGKILL this process and any children it left."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        children = _children(self.proc.pid)
        self.proc.terminate()
        try:
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            for child in children:
                _kill_quietly(child)
            return self.proc.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_quietly(proc: psutil.Process) -> None:
    try:
        proc.kill()
    except psutil.Error:
        pass


class RssSampler(threading.Thread):
    """Samples RSS (process + children) every ``interval`` s until ``stop()``."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.phase = "server"
        self.peak = 0
        self.peaks: dict[str, int] = {}
        self.samples = 0
        self.last = 0
        self._stop_event = threading.Event()

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def run(self) -> None:
        self.sample()
        while not self._stop_event.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        try:
            rss = self.proc.memory_info().rss
            for child in self.proc.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            return
        self.samples += 1
        self.last = rss
        self.peak = max(self.peak, rss)
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
