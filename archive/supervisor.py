"""``imaging-archive serve --workers N``: N server processes on one port.

Each worker is the ordinary server (``serve --worker-index i``), listening with SO_REUSEPORT so
the kernel spreads connections over them; only worker 0 runs the DIMSE listener. Workers share
nothing in memory: the index (SQLite in WAL mode, writers serialized by BEGIN IMMEDIATE) and the
storage folder are the shared state, and each process's staged files and batch journals carry its
process id, so a starting worker never takes another's uploads for leftovers. The supervisor
forwards SIGTERM/SIGINT (each worker then shuts down gracefully) and restarts a worker that dies.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from types import FrameType

log = logging.getLogger("archive.supervisor")

_RESTART_DELAY = 1.0


def _argv(args: argparse.Namespace, index: int, host: str, port: int) -> list[str]:
    argv = [sys.executable, "-m", "archive", "serve", "--host", host, "--port", str(port),
            "--worker-index", str(index)]
    if args.config:
        argv += ["--config", args.config]
    return argv


def supervise(args: argparse.Namespace, workers: int, host: str, port: int) -> int:
    """Run ``workers`` server processes until SIGTERM/SIGINT; their worst exit status."""
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    procs: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(workers):
        procs.append(subprocess.Popen(_argv(args, i, host, port)))
    log.info("supervising %d worker processes on port %d", workers, port)
    while not stopping:
        time.sleep(0.2)
        for i, proc in enumerate(procs):
            code = proc.poll()
            if code is not None and not stopping:
                log.error("worker %d (pid %d) exited with %d; restarting it", i, proc.pid, code)
                time.sleep(_RESTART_DELAY)
                procs[i] = subprocess.Popen(_argv(args, i, host, port))
    codes = [proc.wait() for proc in procs]
    log.info("stopped: workers exited with %s", codes)
    return max(codes, default=0)
