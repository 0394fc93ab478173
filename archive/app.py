"""The aiohttp application: resources opened in a cleanup context, routes, middlewares."""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor

from aiohttp import web

from archive import keys, metrics
from archive.api import harmonization as harmonization_api
from archive.api import release as release_api
from archive.auth import AUTHENTICATOR, Authenticator, auth_middleware
from archive.clinical import api as clinical_api
from archive.cohorts import api as cohorts_api
from archive.config import Config
from archive.deid import DeidConfig, ensure_secret, load_secret
from archive.dicomweb import frames, qido, rendered, stow, wado
from archive.harmonize import Harmonizer
from archive.index.db import create_engine, init_schema, sync_writer_engine
from archive.index.reader import IndexReader
from archive.index.writer import IndexWriter
from archive.ingest import Ingest
from archive.limits import GATE, RequestGate
from archive.pixels.cache import ThumbnailCache
from archive.pixels.codecpool import CodecPool, worker_count
from archive.retrieve import Retriever
from archive.ui import routes as ui_routes
from archive.workers import init_worker
from dimse.server import DimseServer, receive_dir_for
from storage.base import BlobStore, StorageError
from storage.filesystem import FilesystemStore

log = logging.getLogger("archive.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Makes the blob store from the configuration (tests inject a failing store through it).
StoreFactory = Callable[[Config], BlobStore]
_DIMSE = web.AppKey("dimse", DimseServer)  # the DIMSE listener, when it runs

_CORS_HEADERS = "Accept, Authorization, Content-Type, Range"
_CORS_EXPOSE = "Content-Type, Content-Length, Content-Range, Accept-Ranges, Warning, Location"


def _cors_origin(request: web.Request, origins: list[str]) -> str | None:
    origin = request.headers.get("Origin")
    if not origin or not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers CORS preflight requests; the other responses get their headers in _cors_headers."""
    origins: list[str] = request.app[keys.CONFIG].http.cors_origins
    allowed = _cors_origin(request, origins)
    if request.method == "OPTIONS" and allowed and "Access-Control-Request-Method" in request.headers:
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": _CORS_HEADERS,
            "Access-Control-Max-Age": "600",
            "Vary": "Origin"})
    return await handler(request)


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streamed ones and errors included, gets CORS headers."""
    allowed = _cors_origin(request, request.app[keys.CONFIG].http.cors_origins)
    if allowed and "Access-Control-Allow-Origin" not in response.headers:
        response.headers["Access-Control-Allow-Origin"] = allowed
        response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE
        response.headers["Vary"] = "Origin"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Clear 4xx texts; unexpected errors become a short 500 with no stack trace to the client."""
    start = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            log.info("%s %s -> %d %s", request.method, request.path, exc.status, exc.text)
        raise
    except ConnectionResetError as exc:
        # The client went away (or was cut by [http] read_timeout): nobody to answer.
        log.info("%s %s: client connection lost (%s)", request.method, request.path, exc)
        raise
    except StorageError as exc:
        # The blob store failed (an object store unreachable, a missing object): the client may
        # try again later. Once the response has begun, the connection is cut instead.
        log.error("%s %s: storage error: %s", request.method, request.path, exc)
        if request.writer.output_size:
            raise
        return web.Response(status=503, text="storage unavailable, try again later",
                            headers={"Retry-After": "10"})
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return web.Response(status=500, text="internal error (see the server log)")
    log.debug("%s %s -> %d in %.1f ms", request.method, request.path, response.status,
              (time.perf_counter() - start) * 1000)
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def _routes(app: web.Application) -> None:
    r = app.router
    base = "/dicom-web"
    study = base + "/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{instance}"
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics.serve_metrics)  # Prometheus (admin; archive.metrics)
    harmonization_api.add_routes(app)
    clinical_api.add_routes(app)
    cohorts_api.add_routes(app)
    release_api.add_routes(app)
    ui_routes.add_routes(app)  # the data explorer page at /
    r.add_post(base + "/studies", stow.store_instances)
    r.add_post(study, stow.store_instances)
    r.add_get(base + "/studies", qido.search_studies)
    r.add_get(base + "/series", qido.search_series)
    r.add_get(base + "/instances", qido.search_instances)
    r.add_get(study + "/series", qido.search_series)
    r.add_get(study + "/instances", qido.search_instances)
    r.add_get(series + "/instances", qido.search_instances)
    r.add_get(study, wado.retrieve)
    r.add_get(series, wado.retrieve)
    r.add_get(instance, wado.retrieve)
    r.add_get(study + "/metadata", wado.metadata)
    r.add_get(series + "/metadata", wado.metadata)
    r.add_get(instance + "/metadata", wado.metadata)
    r.add_get(instance + "/bulk/{path:.+}", wado.bulkdata)
    # [^/]* (not the default [^/]+): an empty frame list is a 400 with a reason, not a 404.
    r.add_get(instance + "/frames/{frames:[^/]*}", frames.frames)
    for level in (study, series, instance, instance + "/frames/{frames}"):
        r.add_get(level + "/rendered", rendered.rendered)
        r.add_get(level + "/thumbnail", rendered.thumbnail)


def _parse_pool_factory(cfg: Config) -> Callable[[], ProcessPoolExecutor] | None:
    n = cfg.ingest.parse_processes
    if n == -1:
        n = 1 if (os.cpu_count() or 1) > 1 else 0
    if n == 0:
        return None
    # forkserver: workers do not inherit the event loop, threads or sockets of this process;
    # the preload makes a (re)started worker ready without importing pydicom again.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["archive.dicom.part10"])
    server = os.getpid()
    return lambda: ProcessPoolExecutor(n, mp_context=ctx, initializer=init_worker, initargs=(server,))


def load_harmonizer(cfg: Config) -> Harmonizer | None:
    """The configured harmonizer (``[harmonize]``), or None when it is off."""
    if not cfg.harmonize.enabled:
        return None
    return Harmonizer.load(cfg.harmonize_override_path, cfg.harmonize.threshold)


def _configured_store(cfg: Config) -> BlobStore:
    """``[storage] backend``: files under ``path``, or objects of an S3 bucket (staged under ``path``)."""
    if cfg.storage.backend == "s3":
        from storage.s3 import S3Store  # boto3 is imported only by archives that use it

        s3 = cfg.storage.s3
        return S3Store(s3.bucket, cfg.storage_path, prefix=s3.prefix, endpoint_url=s3.endpoint_url,
                       region=s3.region, access_key_id=s3.access_key_id,
                       secret_access_key=s3.secret_access_key)
    return FilesystemStore(cfg.storage_path)


async def _resources(app: web.Application, store_factory: StoreFactory) -> AsyncIterator[None]:
    cfg: Config = app[keys.CONFIG]
    store = store_factory(cfg)
    await store.start()
    engine = create_engine(cfg.database_url, cfg.database.echo)
    await init_schema(engine)
    harmonizer = await asyncio.to_thread(load_harmonizer, cfg)
    writer = IndexWriter(engine, cfg.ingest.duplicate_policy, sync_writer_engine(engine), harmonizer,
                         cfg.release)
    app[keys.STORE] = store
    app[keys.ENGINE] = engine
    app[keys.READER] = IndexReader(engine)
    deid = None
    if cfg.deid_secret_path is not None:
        await asyncio.to_thread(ensure_secret, cfg.deid_secret_path)
        deid = DeidConfig(secret=await asyncio.to_thread(load_secret, cfg.deid_secret_path))
    ingest = Ingest(store, writer, cfg.ingest.bulk_data_threshold, _parse_pool_factory(cfg),
                    cfg.ingest.max_instance_size, deid)
    app[keys.INGEST] = ingest
    codecs = CodecPool(worker_count(cfg.render.codec_processes))
    app[keys.CODECS] = codecs
    removed = await ingest.start()
    dimse: DimseServer | None = None
    if cfg.dimse.enabled:
        # C-STORE data sets are received into a folder that start() empties after a crash.
        dimse = DimseServer(cfg.dimse, ingest, engine, Retriever(engine, store), app[AUTHENTICATOR],
                            receive_dir=receive_dir_for(cfg.storage_path), find_timeout=cfg.qido.timeout)
        dimse.start(asyncio.get_running_loop())
        app[_DIMSE] = dimse
    if removed:
        log.warning("start-up: removed %d unindexed blob(s) of interrupted batches", removed)
    if cfg.render.thumbnail_cache:
        stale = await asyncio.to_thread(ThumbnailCache(cfg.thumbnail_cache_path).remove_temp_files)
        if stale:
            log.warning("start-up: removed %d half-written thumbnail(s) from the cache", stale)
    log.info("ready: storage=%s database=%s", cfg.storage_path, engine.url.render_as_string())
    yield
    if dimse is not None:
        await dimse.shutdown(cfg.http.shutdown_timeout)
    await engine.dispose()
    store.close()
    ingest.close()
    writer.close()
    codecs.close()


async def stop_accepting(app: web.Application) -> None:
    """The HTTP listener has just closed (serve's SIGTERM handling, else on_shutdown): the DIMSE
    listener closes too, and its open associations get the same ``[http] shutdown_timeout`` as
    in-flight HTTP requests. Idempotent."""
    dimse = app.get(_DIMSE)
    if dimse is not None:
        dimse.begin_shutdown(app[keys.CONFIG].http.shutdown_timeout)


def create_app(cfg: Config, store_factory: StoreFactory | None = None) -> web.Application:
    """The application; ``store_factory`` replaces the configured blob store (for tests)."""
    gate = RequestGate(cfg.http.max_concurrent_requests, cfg.http.max_request_size)
    # metrics outermost: it sees every request and status, errors and refusals included.
    app = web.Application(middlewares=[metrics.middleware, cors_middleware, error_middleware, auth_middleware,
                                       gate.middleware],
                          client_max_size=cfg.http.max_request_size or 1024 ** 4)
    app[keys.CONFIG] = cfg
    app[GATE] = gate
    app[AUTHENTICATOR] = Authenticator.from_config(cfg)
    app.on_response_prepare.append(_cors_headers)
    app.on_shutdown.append(stop_accepting)
    app.cleanup_ctx.append(functools.partial(_resources, store_factory=store_factory or _configured_store))
    _routes(app)
    return app
