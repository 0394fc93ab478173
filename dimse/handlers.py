"""DIMSE event handlers: C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET on top of the archive.

pynetdicom calls these in its association threads. Each one hands its work to the archive's
asyncio loop (:meth:`Bridge.call`) and waits for the answer there, so the loop never blocks on the
network and the archive code stays single-threaded. Storage and SQL belong to the archive:
C-STORE calls the ingest pipeline, C-FIND the shared search, C-MOVE/C-GET the retriever.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from archive import metrics
from archive.auth import Authenticator, Principal
from archive.config import DimseConfig
from archive.ingest import Expected, Ingest
from archive.query.cfind import PATIENT_ROOT, STUDY_ROOT, FindRequest, parse_identifier, to_identifier
from archive.query.model import QueryError
from archive.query.run import QueryTimeout, search
from archive.retrieve import Retriever
from dimse.policy import AccessPolicy, Caller

log = logging.getLogger("dimse")
T = TypeVar("T")

SUCCESS = 0x0000
COERCED = 0xB000  # PS3.4 B.2.3: Warning, Coercion of Data Elements
PENDING = 0xFF00
CANCEL = 0xFE00
NOT_AUTHORIZED = 0x0124  # PS3.7 C.4: Refused: Not Authorized
IDENTIFIER_MISMATCH = 0xA900
OUT_OF_RESOURCES = 0xA700
_PATIENT_ROOT = {PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelGet,
                 PatientRootQueryRetrieveInformationModelMove}
_FIND_PAGE = 200
_UNREADABLE: Any = "unreadable stored instance"
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO
    return ds


def _caller(event: Event) -> Caller:
    requestor = event.assoc.requestor
    return Caller(str(requestor.ae_title).strip(), str(requestor.address))


def _model(event: Event) -> str:
    return PATIENT_ROOT if event.request.AffectedSOPClassUID in _PATIENT_ROOT else STUDY_ROOT


def _open_and_read(path: Path, size: int) -> tuple[BinaryIO, bytes]:
    f = open(path, "rb")  # noqa: SIM115 - closed by _file_chunks
    try:
        return f, f.read(size)
    except BaseException:
        f.close()
        raise


async def _file_chunks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """A received data set's temporary file in chunks, one executor call per chunk (the first
    also opens it; a short read of a regular file is its end): a slice of CT takes one hand-off
    instead of the four of an aiofiles open, read, read-to-EOF and close."""
    loop = asyncio.get_running_loop()
    f, chunk = await loop.run_in_executor(None, _open_and_read, path, size)
    try:
        while chunk:
            yield chunk
            if len(chunk) < size:
                return
            chunk = await loop.run_in_executor(None, f.read, size)
    finally:
        f.close()  # a read-only file: close(2) does not wait on the disk


def _store_contexts(instances: list[Any]) -> list[Any]:
    """Presentation contexts for C-MOVE sub-operations (at most 128, PS3.8 9.3.2.2): one per
    SOP class and compressed (or big endian) transfer syntax stored (a destination accepts one
    syntax per context), and one per SOP class with the little endian uncompressed syntaxes,
    between which pynetdicom re-encodes."""
    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    for inst in instances:
        ts = UID(inst.transfer_syntax_uid)
        if ts.is_transfer_syntax and not ts.is_compressed and ts.is_little_endian:
            wanted[(inst.sop_class_uid, _UNCOMPRESSED)] = None
        else:
            wanted[(inst.sop_class_uid, (str(ts),))] = None
    contexts = [build_context(sop_class, list(syntaxes)) for sop_class, syntaxes in wanted]
    return contexts[:128] or [build_context(Verification)]


class Bridge:
    """Runs archive coroutines on its event loop from pynetdicom's threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout)


class ArchiveHandlers:
    def __init__(self, cfg: DimseConfig, bridge: Bridge, ingest: Ingest, engine: AsyncEngine,
                 retriever: Retriever, policy: AccessPolicy, auth: Authenticator,
                 find_timeout: float = 0) -> None:
        self.cfg = cfg
        self.auth = auth
        self.find_timeout = find_timeout  # [qido] timeout: one query model, one limit
        self.bridge = bridge
        self.ingest = ingest
        self.engine = engine
        self.retriever = retriever
        self.policy = policy

    def handlers(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_C_ECHO, self.on_echo), (evt.EVT_C_STORE, self.on_store),
                (evt.EVT_C_FIND, self.on_find), (evt.EVT_C_MOVE, self.on_move),
                (evt.EVT_C_GET, self.on_get), (evt.EVT_ACCEPTED, self._on_association),
                (evt.EVT_REJECTED, self._on_association), (evt.EVT_RELEASED, self._on_association),
                (evt.EVT_ABORTED, self._on_association), (evt.EVT_CONN_CLOSE, self._on_close)]

    @staticmethod
    def _on_close(event: Event) -> None:
        """Delete the temporary file of a C-STORE data set the connection ended in the middle of
        (A-ABORT, dropped connection): pynetdicom removes it only after a complete C-STORE."""
        metrics.connection_closed(event.assoc)
        message = getattr(getattr(event.assoc, "dimse", None), "message", None)
        partial = getattr(message, "_data_set_file", None)
        if partial is None:
            return
        with contextlib.suppress(OSError):
            partial.close()
        with contextlib.suppress(OSError):
            os.unlink(partial.name)
        log.info("c-store interrupted: the partly received data set was discarded")

    def _on_association(self, event: Event) -> None:
        caller = _caller(event)
        log.info("association %s calling=%s host=%s", event.event.name.removeprefix("EVT_").lower(),
                 caller.ae_title, caller.host)
        metrics.association_event(event.event.name, event.assoc)

    # -- C-ECHO ---------------------------------------------------------------------------
    def on_echo(self, event: Event) -> int:
        return SUCCESS

    # -- C-STORE (PS3.4 B.2.3) --------------------------------------------------------------
    def on_store(self, event: Event) -> Dataset:
        caller = _caller(event)
        if not self.policy.allows("store", caller):
            log.warning("c-store refused: calling AE %s@%s not allowed", caller.ae_title, caller.host)
            return _status(NOT_AUTHORIZED, "calling AE title not allowed to store")
        if not self._principal(caller).can_store:
            log.warning("c-store refused: calling AE %s@%s has no contributor role", caller.ae_title,
                        caller.host)
            return _status(NOT_AUTHORIZED, "calling AE title has no contributor role")
        metrics.INGEST_PATH.set("cstore")  # this association's thread: counted as C-STORE ingest
        req = event.request
        expected = Expected(sop_class_uid=str(req.AffectedSOPClassUID),
                            sop_uid=str(req.AffectedSOPInstanceUID))
        # pynetdicom wrote the data set as received, behind a File Meta of the negotiated
        # transfer syntax (STORE_RECV_CHUNKED_DATASET): the same file STOW-RS would send.
        chunks = _file_chunks(event.dataset_path)
        result = self.bridge.call(self.ingest.store_instance(chunks, expected))
        if result.ok and result.coerced:  # de-identified: PS3.4 B.2.3, Warning B000
            return _status(COERCED, "stored de-identified (UIDs replaced by pseudonyms)")
        if result.ok:
            return _status(SUCCESS)
        log.warning("c-store failed sop=%s from %s: 0x%04X %s", result.sop_uid, caller.ae_title,
                    result.status, result.message)
        return _status(result.status, result.message)

    # -- C-FIND (PS3.4 C.4.1) ---------------------------------------------------------------
    def on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        caller = _caller(event)
        if not self.policy.allows("query", caller):
            yield _status(NOT_AUTHORIZED, "calling AE title not allowed to query"), None
            return
        try:
            req = parse_identifier(event.identifier, _model(event))
        except QueryError as exc:
            yield _status(IDENTIFIER_MISMATCH, str(exc)), None
            return
        offset = 0
        while True:
            if event.is_cancelled:
                yield CANCEL, None
                return
            query = dataclasses.replace(req.query, offset=offset,
                                        visible=self._principal(caller).visibility)
            try:
                found = self.bridge.call(search(self.engine, query, _FIND_PAGE, "", self.find_timeout))
            except QueryTimeout as exc:
                # PS3.4 C.4.1.1.4 (Table C.4-1): A700 Refused: Out of Resources.
                log.warning("c-find interrupted: %s (calling %s)", exc, caller.ae_title)
                yield _status(OUT_OF_RESOURCES, str(exc)), None
                return
            for doc in found.docs:
                if event.is_cancelled:
                    yield CANCEL, None
                    return
                yield PENDING, to_identifier(doc, req, self.cfg.ae_title)
            if not found.more:
                log.info("c-find level=%s matches=%d calling=%s", req.level_name,
                         offset + len(found.docs), caller.ae_title)
                return
            offset += _FIND_PAGE

    # -- C-MOVE / C-GET (PS3.4 C.4.2, C.4.3) ------------------------------------------------
    def _principal(self, caller: Caller) -> Principal:
        return self.auth.dimse_principal(caller.ae_title, caller.host)

    def _retrieve_request(self, event: Event) -> FindRequest:
        """The C-MOVE / C-GET identifier as a query over what the calling AE may see."""
        req = parse_identifier(event.identifier, _model(event))
        req.query.visible = self._principal(_caller(event)).visibility
        return req

    def on_move(self, event: Event) -> Iterator[Any]:
        caller = _caller(event)
        if not self.policy.allows("retrieve", caller):
            log.warning("c-move refused: calling AE %s@%s not allowed", caller.ae_title, caller.host)
            raise PermissionError("calling AE title not allowed to retrieve")
        destination = str(event.move_destination).strip()
        peer = next((p for p in self.cfg.peers.values() if p.ae_title == destination), None)
        if peer is None:
            log.warning("c-move to unknown destination %r from %s", destination, caller.ae_title)
            yield None, None  # pynetdicom answers 0xA801: Move Destination unknown
            return
        try:
            req = self._retrieve_request(event)
        except QueryError as exc:
            raise ValueError(str(exc)) from exc
        instances = self.bridge.call(self.retriever.instances(req.query))
        log.info("c-move level=%s instances=%d to=%s calling=%s", req.level_name, len(instances),
                 destination, caller.ae_title)
        yield peer.host, peer.port, {"contexts": _store_contexts(instances)}
        yield len(instances)
        yield from self._datasets(event, instances)

    def on_get(self, event: Event) -> Iterator[Any]:
        caller = _caller(event)
        # A refusal announces one sub-operation, then fails: with zero, pynetdicom would end
        # the C-GET with Success before seeing the failure status.
        if not self.policy.allows("retrieve", caller):
            yield 1
            yield _status(NOT_AUTHORIZED, "calling AE title not allowed to retrieve"), None
            return
        try:
            req = self._retrieve_request(event)
        except QueryError as exc:
            yield 1
            yield _status(IDENTIFIER_MISMATCH, str(exc)), None
            return
        instances = self.bridge.call(self.retriever.instances(req.query))
        log.info("c-get level=%s instances=%d calling=%s", req.level_name, len(instances),
                 caller.ae_title)
        yield len(instances)
        yield from self._datasets(event, instances)

    def _datasets(self, event: Event, instances: list[Any]) -> Iterator[tuple[int, Dataset | None]]:
        for inst in instances:
            if event.is_cancelled:
                yield CANCEL, None
                return
            try:
                ds = self.retriever.read(inst)
            except Exception:  # a missing or unreadable file: a failed sub-operation
                log.exception("cannot read stored instance sop=%s", inst.sop_uid)
                yield PENDING, _UNREADABLE  # pynetdicom counts a non-Dataset as a failure
                continue
            yield PENDING, ds
