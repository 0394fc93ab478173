"""Where codec work runs: worker processes when configured, else the default thread pool.

pylibjpeg's OpenJPEG and libjpeg decoders and encoders keep the GIL for the whole call (measured:
two threads decode JPEG 2000 no faster than one), so decoding frames for a client that asked for
native pixels, or transcoding a series, would use one core of the server whatever its size. A
process pool gives each codec call a core; arguments and results are bytes (a frame, a file),
which cost little to pass next to the codec time.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, TypeVar

from archive.workers import init_worker

T = TypeVar("T")


def worker_count(configured: int) -> int:
    """``[render] codec_processes``: -1 means one per CPU when there are several."""
    if configured == -1:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return cpus if cpus > 1 else 0
    return configured


class CodecPool:
    """Runs blocking codec functions off the event loop. Workers are started lazily by the
    executor on first use; ``close`` stops them."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: Executor | None = None
        if processes > 0:
            # forkserver: workers inherit none of the server's threads, sockets or loop; the
            # preload imports the codecs once in the server that forks them.
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["archive.pixels.transcode"])
            self._pool = ProcessPoolExecutor(processes, mp_context=ctx, initializer=init_worker,
                                             initargs=(os.getpid(),))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker process (fn and args must pickle) or a thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
