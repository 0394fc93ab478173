"""``GET /metrics``: the server's figures in the Prometheus text format (prometheus-client).

What is counted (every name starts with ``imaging_archive_``):

- ``http_requests_total{route, method, status}`` and ``http_request_duration_seconds{route,
  method}`` (histogram): ``route`` is the route template (``/dicom-web/studies/{study}``), never
  the path with its UIDs, so the number of series stays bounded; requests no route matched are
  ``unmatched``. ``http_requests_in_progress``.
- ``instances_ingested_total{path, outcome}``: instances the ingest pipeline stored (``stored``,
  ``replaced``) or found stored already (``identical``), by way in (``path``: ``stow``,
  ``cstore``, ``bulk``); ``ingested_bytes_total{path}``: bytes newly stored;
  ``ingest_failures_total{path, reason}``: instances refused, by their PS3.4 status (``0xC000``...).
- ``dimse_associations_total{result}`` (``accepted``, ``rejected``) and
  ``dimse_associations_active``.

``serve --workers N``: each worker is its own process, so a registry in memory would show a
scrape only the worker that answered it. The supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a
private folder it empties at start (:func:`use_multiprocess_dir`), each worker writes its values
to files there (prometheus-client's multiprocess mode, chosen when the library is imported, so the
variable is set before the workers start), and a scrape adds up every worker's files; the
supervisor calls :func:`worker_exited` for a worker that stops, so its in-progress gauges go.

Access: admin tokens (``archive.auth.require_admin``); a single-user server (no tokens, loopback
only) answers everyone, since every caller is admin there.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from archive.auth import require_admin

log = logging.getLogger("archive.metrics")
P = ParamSpec("P")
R = TypeVar("R")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "imaging_archive_"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"})
# Seconds: from a cached thumbnail (ms) to a large series retrieve or STOW-RS request (minutes).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# No "<name>_created" series: a timestamp per label set doubles the output and says nothing here.
disable_created_metrics()

HTTP_REQUESTS = Counter(_PREFIX + "http_requests", "HTTP requests answered, by route template, "
                        "method and status", ["route", "method", "status"])
HTTP_LATENCY = Histogram(_PREFIX + "http_request_duration_seconds", "Time from a request's arrival "
                         "to the end of its response, by route template and method", ["route", "method"],
                         buckets=_LATENCY_BUCKETS)
HTTP_IN_PROGRESS = Gauge(_PREFIX + "http_requests_in_progress", "HTTP requests being handled",
                         multiprocess_mode="livesum")
INSTANCES = Counter(_PREFIX + "instances_ingested", "Instances stored (or found stored already), by "
                    "way in (stow, cstore, bulk) and outcome (stored, replaced, identical)",
                    ["path", "outcome"])
BYTES = Counter(_PREFIX + "ingested_bytes", "Bytes of the instances newly stored, by way in", ["path"])
FAILURES = Counter(_PREFIX + "ingest_failures", "Instances refused, by way in and failure reason "
                   "(PS3.4 status, e.g. 0xC000)", ["path", "reason"])
ASSOCIATIONS = Counter(_PREFIX + "dimse_associations", "DIMSE associations requested, by result "
                       "(accepted, rejected)", ["result"])
ASSOCIATIONS_ACTIVE = Gauge(_PREFIX + "dimse_associations_active", "DIMSE associations open",
                            multiprocess_mode="livesum")

# The way in of the ingest running in this context: the HTTP middleware sets "stow", the C-STORE
# handler "cstore", bulk ingest "bulk" (a task inherits its creator's value).
INGEST_PATH: contextvars.ContextVar[str] = contextvars.ContextVar("ingest_path", default="other")
_open_associations: set[int] = set()


# -- ingest -------------------------------------------------------------------------------------

def _reason(status: int) -> str:
    return f"0x{status:04X}"


def counts_refusals(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Count the refusals a step of the ingest pipeline returns (a result whose ``ok`` is False)."""
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        out = await fn(*args, **kwargs)
        if getattr(out, "ok", True) is False:
            FAILURES.labels(INGEST_PATH.get(), _reason(getattr(out, "status", 0))).inc()
        return out
    return wrapper


def committed(results: Iterable[tuple[Any, int]]) -> None:
    """Count a committed batch: (IngestResult, bytes) per instance."""
    path = INGEST_PATH.get()
    for result, size in results:
        if not result.ok:
            FAILURES.labels(path, _reason(result.status)).inc()
            continue
        outcome = result.outcome.value if result.outcome is not None else "stored"
        INSTANCES.labels(path, outcome).inc()
        if outcome in ("stored", "replaced"):
            BYTES.labels(path).inc(size)


# -- DIMSE --------------------------------------------------------------------------------------

def association_event(event_name: str, assoc: object) -> None:
    """pynetdicom's EVT_ACCEPTED / EVT_REJECTED for an association."""
    if event_name == "EVT_ACCEPTED":
        ASSOCIATIONS.labels("accepted").inc()
        _open_associations.add(id(assoc))
        ASSOCIATIONS_ACTIVE.inc()
    elif event_name == "EVT_REJECTED":
        ASSOCIATIONS.labels("rejected").inc()


def connection_closed(assoc: object) -> None:
    """EVT_CONN_CLOSE: an accepted association is over (released, aborted or dropped)."""
    try:
        _open_associations.remove(id(assoc))
    except KeyError:  # never accepted (rejected, or closed during negotiation)
        return
    ASSOCIATIONS_ACTIVE.dec()


# -- HTTP ---------------------------------------------------------------------------------------

def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by route template, method and status, and time it."""
    INGEST_PATH.set("stow")  # the one way in over HTTP (this request's task only)
    route, method = _route(request), request.method if request.method in _METHODS else "other"
    start = time.perf_counter()
    status = "499"  # the client went away before an answer (nginx's code for it)
    HTTP_IN_PROGRESS.inc()
    try:
        response = await handler(request)
        status = str(response.status)
        return response
    except web.HTTPException as exc:
        status = str(exc.status)
        raise
    except Exception:
        status = "500"
        raise
    finally:
        HTTP_IN_PROGRESS.dec()
        HTTP_REQUESTS.labels(route, method, status).inc()
        HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - start)


def _exposition() -> bytes:
    if MULTIPROC_ENV not in os.environ:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # every worker's files in the folder
    return generate_latest(registry)


async def serve_metrics(request: web.Request) -> web.Response:
    """GET /metrics (admin): the text exposition format, version 0.0.4/1.0.0."""
    require_admin(request)
    body = await asyncio.to_thread(_exposition)  # reads the workers' files in multiprocess mode
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# -- serve --workers ----------------------------------------------------------------------------

def use_multiprocess_dir(storage_path: Path) -> Path:
    """Make the metrics folder of the server on ``storage_path`` (a private folder of the system's
    temporary area, named after the storage folder), empty it, and name it in
    ``PROMETHEUS_MULTIPROC_DIR`` for the workers about to be started."""
    digest = hashlib.sha256(str(Path(storage_path).resolve()).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"imaging-archive-metrics-{digest}"
    folder.mkdir(mode=0o700, exist_ok=True)
    st = folder.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():  # someone else's: a fresh one
        folder = Path(tempfile.mkdtemp(prefix="imaging-archive-metrics-"))
    for entry in folder.iterdir():  # the values of an earlier run: counters start again at zero
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def worker_exited(pid: int) -> None:
    """A worker process is gone: drop its live gauges (its counters keep counting in the sum)."""
    if MULTIPROC_ENV in os.environ:
        multiprocess.mark_process_dead(pid)
