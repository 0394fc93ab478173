"""Set-up of the server's worker processes (parse and codec pools).

A worker of a ``ProcessPoolExecutor`` waits on a queue whose both ends it holds, so it never
sees the server die: after a SIGKILL or an out-of-memory kill of the server, its workers would
live on, idle, holding their memory (found by tests/test_crash_safety.py). Each worker watches
the server process and exits when it is gone.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time


def init_worker(server_pid: int) -> None:
    """Pool initializer: Ctrl-C is the server's to handle; exit when the server is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(server_pid,), name="server-watch", daemon=True).start()


def _exit_with(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)  # Linux 5.3+: readable once the process has exited
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
        os._exit(0)
    while True:  # elsewhere: ask every second
        time.sleep(1)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass
