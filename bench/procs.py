"""Subprocesses the benchmark starts (the archive server, the plain file server) and memory sampling.

``ManagedProcess`` starts a command with its output in a log file, waits for its health URL to
answer 200, and stops it (SIGTERM, then SIGKILL after a grace period) by its own pid only.
``MemorySampler`` samples a process and all its children (recursive) every ~100 ms in a thread: the
sum of their RSS and the sum of their PSS, and keeps the peak of each overall and per named phase.
RSS counts a page shared by several processes (e.g. forked workers) once per process; PSS splits it
between them, so the PSS sum is the honest footprint of a multi-process server.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
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


@dataclass
class MemoryPeaks:
    """Peaks in bytes of the RSS sum and of the PSS sum (each its own peak; they need not coincide)."""

    rss: int = 0
    pss: int = 0

    def update(self, rss: int, pss: int) -> None:
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)


class MemorySampler(threading.Thread):
    """Samples RSS and PSS, summed over a process and its children, every ``interval`` s until ``stop()``.

    PSS comes from ``memory_full_info()`` (``/proc/PID/smaps_rollup`` on Linux), which costs far more
    than ``memory_info()``; the time spent sampling is kept (wall, and this thread's CPU: the wall time
    also holds waits for the GIL and for busy CPUs) so the cost can be reported. Where PSS is
    not available (not Linux) ``has_pss`` is False and the PSS figures stay 0.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(name="memory-sampler", daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.phase = "server"
        self.peak = MemoryPeaks()
        self.peaks: dict[str, MemoryPeaks] = {}
        self.samples = 0
        self.max_processes = 0
        self.sample_seconds = 0.0
        self.sample_cpu_seconds = 0.0
        self.has_pss = True
        self._lock = threading.Lock()  # sample() is also called from the driver at each step's end
        self._stop_event = threading.Event()

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def run(self) -> None:
        """One sample per ``interval`` on a fixed schedule (a slow sample does not stretch the period)."""
        next_at = time.monotonic()
        while True:
            self.sample()
            next_at = max(next_at + self.interval, time.monotonic())
            if self._stop_event.wait(next_at - time.monotonic()):
                return

    def _measure(self, proc: psutil.Process) -> tuple[int, int]:
        if self.has_pss:
            info = proc.memory_full_info()
            pss = getattr(info, "pss", None)
            if pss is not None:
                return info.rss, pss
            self.has_pss = False
        return proc.memory_info().rss, 0

    def sample(self) -> None:
        with self._lock:
            self._sample()

    def _sample(self) -> None:
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            rss, pss = self._measure(self.proc)
            children = self.proc.children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            try:
                child_rss, child_pss = self._measure(child)
            except psutil.Error:  # exited meanwhile
                continue
            rss, pss = rss + child_rss, pss + child_pss
        self.sample_seconds += time.perf_counter() - started
        self.sample_cpu_seconds += time.thread_time() - cpu_started
        self.samples += 1
        self.max_processes = max(self.max_processes, 1 + len(children))
        self.peak.update(rss, pss)
        self.peaks.setdefault(self.phase, MemoryPeaks()).update(rss, pss)

    @property
    def mean_sample_ms(self) -> float:
        return self.sample_seconds / self.samples * 1000 if self.samples else 0.0

    @property
    def mean_sample_cpu_ms(self) -> float:
        return self.sample_cpu_seconds / self.samples * 1000 if self.samples else 0.0

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
