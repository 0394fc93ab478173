"""``imaging-archive serve --workers N``: N server processes on one port.

Each worker is the ordinary server (``serve --worker-index i``). The supervisor binds the
listening socket once and every worker accepts from it (``--listen-fd``), as gunicorn does: the
accept queue is shared, so a worker that dies takes only the connections it had accepted with it,
never ones still queued (with one SO_REUSEPORT socket per worker, a dying worker's queue is reset).
Only worker 0 runs the DIMSE listener. Workers share
nothing in memory: the index (SQLite in WAL mode, writers serialized by BEGIN IMMEDIATE) and the
storage folder are the shared state, and each process's staged files and batch journals carry its
process id, so a starting worker never takes another's uploads for leftovers. The supervisor
forwards SIGTERM/SIGINT (each worker then shuts down gracefully) and restarts a worker that dies.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from archive import metrics

log = logging.getLogger("archive.supervisor")

_RESTART_DELAY = 1.0
_FATAL = 2  # the exit status of `serve` for a bad configuration or index schema (archive.cli)


def _argv(args: argparse.Namespace, index: int, host: str, port: int, fd: int) -> list[str]:
    argv = [sys.executable, "-m", "archive", "serve", "--host", host, "--port", str(port),
            "--worker-index", str(index), "--listen-fd", str(fd)]
    if args.config:
        argv += ["--config", args.config]
    return argv


def listen(host: str, port: int) -> socket.socket:
    """The one listening socket all workers accept from (inheritable, so it passes to them)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(info[4])
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def supervise(args: argparse.Namespace, workers: int, host: str, port: int) -> int:
    """Run ``workers`` server processes until SIGTERM/SIGINT; their worst exit status."""
    stopping = False
    sock = listen(host, port)
    fd = sock.fileno()

    def start(index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(_argv(args, index, host, port, fd), pass_fds=(fd,))

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
        procs.append(start(i))
    log.info("supervising %d worker processes on port %d", workers, port)
    while not stopping:
        time.sleep(0.2)
        for i, proc in enumerate(procs):
            code = proc.poll()
            if code == _FATAL and not stopping:
                # The configuration or the index schema is wrong: every restart would fail the
                # same way, so stop all (the worker said why) instead of restarting for ever.
                log.error("worker %d (pid %d) exited with %d: stopping", i, proc.pid, code)
                stop(signal.SIGTERM, None)
            elif code is not None and not stopping:
                log.error("worker %d (pid %d) exited with %d; restarting it", i, proc.pid, code)
                metrics.worker_exited(proc.pid)
                time.sleep(_RESTART_DELAY)
                procs[i] = start(i)
    codes = [proc.wait() for proc in procs]
    for proc in procs:
        metrics.worker_exited(proc.pid)
    sock.close()
    log.info("stopped: workers exited with %s", codes)
    return max(codes, default=0)
