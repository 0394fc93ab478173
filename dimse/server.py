"""The DIMSE listener: a pynetdicom AE with the archive's services and association policy.

It runs in pynetdicom's own threads beside the HTTP server; :mod:`dimse.handlers` bridges each
request to the archive's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import logging
import os
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydicom.uid import UID_dictionary
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    _config,
    acse,
    dimse_messages,
)
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer
from sqlalchemy.ext.asyncio import AsyncEngine

from archive.auth import Authenticator
from archive.config import DimseConfig
from archive.ingest import Ingest
from archive.retrieve import Retriever
from dimse import reactor
from dimse.handlers import ArchiveHandlers, Bridge
from dimse.policy import AccessPolicy

log = logging.getLogger("dimse")

QUERY_RETRIEVE = (
    PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet,
)

# C-STORE data sets go to a temporary file as they arrive instead of into memory, and the
# handler gets its path: memory stays flat whatever the instance size.
_config.STORE_RECV_CHUNKED_DATASET = True


def receive_dir_for(storage_path: Path) -> Path:
    """Where C-STORE data sets are received: a folder of the system's temporary area named after
    the storage folder.

    pynetdicom deletes each received file after the C-STORE handler returns, but a server killed
    (SIGKILL, power cut) while receiving or ingesting left it in the system temporary folder for
    good (found by tests/test_crash_safety.py: one file per C-STORE in flight at the kill). A
    folder the next start can find is emptied then (:func:`_receive_into`). Not the storage
    volume: when that is full, ingest must still get the data set and answer 0xA700."""
    digest = hashlib.sha256(str(Path(storage_path).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"imaging-archive-dimse-{digest}"


def _receive_into(folder: Path | None) -> int:
    """Have pynetdicom create its temporary files in ``folder`` (None: the system's folder),
    after removing what a killed server left there; returns how many files were removed.
    pynetdicom has no setting for the folder; it calls its module's NamedTemporaryFile."""
    removed = 0
    if folder is not None:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():  # someone else's: not ours
            log.warning("not receiving C-STORE data sets in %s: not a folder of this user", folder)
            folder = None
        else:
            for leftover in folder.iterdir():
                leftover.unlink(missing_ok=True)
                removed += 1
    dimse_messages.NamedTemporaryFile = (  # type: ignore[attr-defined]
        tempfile.NamedTemporaryFile if folder is None
        else functools.partial(tempfile.NamedTemporaryFile, dir=str(folder)))
    return removed


# Largest PDU we accept (PS3.8 D.3.3.2.1). pynetdicom's default, 16 kB, makes a sender cut a
# 0.5 MB CT slice into 32 PDUs, each costing a pass of pynetdicom's Python receive loop.
MAX_PDU = 1 << 20


def _nodelay(sock: socket.socket) -> None:
    """DIMSE is request/response over many small writes: without TCP_NODELAY, Nagle's algorithm
    and delayed ACKs stall each exchange (measured: C-MOVE 7.1 s -> 4.7 s for 500 slices)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


class _Handler(RequestHandler):
    """pynetdicom's request handler, giving each accepted association event-driven reactors."""

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        reactor.install(assoc)
        return assoc


class _Server(ThreadedAssociationServer):
    """pynetdicom's association server with TCP_NODELAY on accepted connections."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = super().get_request()
        _nodelay(sock)
        return sock, address


_create_socket = AssociationSocket._create_socket


def _create_socket_nodelay(self: AssociationSocket, address: Any) -> socket.socket:
    sock = _create_socket(self, address)
    _nodelay(sock)
    return sock


# Outgoing associations (C-MOVE sub-operations) are made inside pynetdicom, which offers no
# socket-option hook: this wraps its socket factory, keeping everything else as it is.
AssociationSocket._create_socket = _create_socket_nodelay  # type: ignore[method-assign]

# The largest PDU a peer may send us: our Maximum Length Received (PS3.8 §9.3.1, §D.1; a peer must
# not exceed it) plus slack for PDU headers; an A-ASSOCIATE-RQ is far smaller. pynetdicom reads a
# PDU's declared length whole into memory, so without this bound one connection declaring a 4 GB
# PDU and trickling bytes would hold an association slot and grow the server towards 4 GB.
MAX_PDU_IN = MAX_PDU + (64 << 10)
_recv = AssociationSocket.recv


def _recv_bounded(self: AssociationSocket, nr_bytes: int) -> bytearray:
    if nr_bytes > MAX_PDU_IN:
        log.warning("DIMSE peer %s declared a PDU of %d bytes (more than %d): connection closed",
                    getattr(self.socket, "getpeername", lambda: "?")(), nr_bytes, MAX_PDU_IN)
        # OSError makes pynetdicom's reader report the transport closed (Evt17) and end the
        # association; nothing of the PDU is read.
        raise OSError(f"PDU length {nr_bytes} exceeds {MAX_PDU_IN}")
    # pynetdicom waits for a PDU's remaining bytes on a socket without timeout, so a peer that
    # stops mid-PDU (or sends a few stray bytes) held the connection for ever. Its own idle
    # limit, the network timeout (no data for that long: abort), applies here too: the read
    # then raises TimeoutError, an OSError, which pynetdicom treats as the transport closing.
    sock, assoc = self.socket, getattr(self, "_assoc", None)
    timeout = getattr(assoc, "network_timeout", None)
    if sock is not None and timeout is not None and sock.gettimeout() is None:
        sock.settimeout(timeout)
    data = _recv(self, nr_bytes)
    _quickack(sock)
    return data


def _quickack(sock: socket.socket | None) -> None:
    """Acknowledge at once what was read (Linux TCP_QUICKACK, which the kernel turns off again by
    itself: so after every read). A sender that leaves Nagle's algorithm on, as dcmtk does by
    default, holds the last small segment of a PDU until the previous one is acknowledged, and a
    delayed acknowledgement takes 40 ms: every C-ECHO or C-STORE from storescu paid it."""
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if sock is None or quickack is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
    except OSError:  # closed meanwhile, or not TCP
        pass


AssociationSocket.recv = _recv_bounded  # type: ignore[method-assign]


def _all_transfer_syntaxes() -> list[str]:
    """pynetdicom's list plus the retired ones pydicom knows (e.g. JPEG processes 6/8, 10/12):
    STOW-RS stores them, so C-STORE must too."""
    known = list(ALL_TRANSFER_SYNTAXES)
    for uid, entry in UID_dictionary.items():
        if entry[1] == "Transfer Syntax" and uid not in known:
            known.append(uid)
    return known


def _negotiate_in_requestor_order(rq_contexts: list[Any], ac_contexts: list[Any],
                                  roles: Any = None) -> Any:
    """pynetdicom accepts, of the transfer syntaxes a context proposes, the first in *our* list
    (Implicit VR LE first). A PACS lists its preferred one first (often the compressed one its
    images are in): negotiate each proposed context with our syntaxes in the proposer's order,
    so the data arrive as the sender has them."""
    supported = {cx.abstract_syntax: cx for cx in ac_contexts}
    results: list[Any] = []
    accepted_roles: dict[Any, Any] = {}  # role selection items, one per SOP class
    for rq in rq_contexts:
        ac = supported.get(rq.abstract_syntax)
        if ac is None:
            cx_result, cx_roles = _negotiate_as_acceptor([rq], ac_contexts, roles)
        else:
            ours = set(ac.transfer_syntax)
            ordered = copy.copy(ac)
            ordered.transfer_syntax = ([ts for ts in rq.transfer_syntax if ts in ours]
                                       + [ts for ts in ac.transfer_syntax
                                          if ts not in rq.transfer_syntax])
            cx_result, cx_roles = _negotiate_as_acceptor([rq], [ordered], roles)
        results.extend(cx_result)
        for item in cx_roles:
            accepted_roles.setdefault(getattr(item, "sop_class_uid", id(item)), item)
    return results, list(accepted_roles.values())


_negotiate_as_acceptor = acse.negotiate_as_acceptor
acse.negotiate_as_acceptor = _negotiate_in_requestor_order


def build_ae(cfg: DimseConfig, policy: AccessPolicy) -> AE:
    ae = AE(ae_title=cfg.ae_title)
    ae.maximum_pdu_size = MAX_PDU
    ae.maximum_associations = cfg.max_associations
    ae.acse_timeout = cfg.acse_timeout
    ae.dimse_timeout = cfg.dimse_timeout
    ae.network_timeout = cfg.network_timeout
    ae.add_supported_context(Verification)
    syntaxes = _all_transfer_syntaxes()
    for cx in AllStoragePresentationContexts:
        # SCP for C-STORE; and, with role selection, SCU on a C-GET requester's association.
        ae.add_supported_context(cx.abstract_syntax, syntaxes, scu_role=True, scp_role=True)
    for uid in QUERY_RETRIEVE:
        ae.add_supported_context(uid)
    required = policy.association_ae_titles()
    if required is not None:
        ae.require_calling_aet = required
    return ae


def _never_associated(assoc: Any) -> bool:
    """No A-ASSOCIATE-RQ received yet: the upper layer is idle (Sta1) or waiting for it (Sta2)
    (PS3.8 9.2)."""
    return assoc.dul.state_machine.current_state in ("Sta1", "Sta2") and not assoc.is_established


def _drop_unassociated(assoc: Any) -> None:
    """Close a connection on which no association was established. A-ABORT is not a valid
    event before an A-ASSOCIATE-RQ (pynetdicom raises), so the transport is closed (PS3.8
    9.2, Evt17) and the DUL stopped; the association thread, a daemon waiting for an
    A-ASSOCIATE-RQ, ends at its ACSE timeout and is not waited for."""
    with contextlib.suppress(Exception):
        assoc.dul.socket.close()
    with contextlib.suppress(Exception):
        assoc.kill()


class DimseServer:
    def __init__(self, cfg: DimseConfig, ingest: Ingest, engine: AsyncEngine, retriever: Retriever,
                 auth: Authenticator, receive_dir: Path | None = None, find_timeout: float = 0) -> None:
        self.cfg = cfg
        self.auth = auth  # the role of each calling AE ([[dimse.ae]])
        self.find_timeout = find_timeout
        self.receive_dir = receive_dir  # where C-STORE data sets are received (receive_dir_for)
        self.policy = AccessPolicy({"store": cfg.allow.store, "query": cfg.allow.query,
                                    "retrieve": cfg.allow.retrieve})
        self.ingest = ingest
        self.engine = engine
        self.retriever = retriever
        self._server: Any = None
        self._stop_lock = threading.Lock()
        self._accepting_stopped = False
        self._stopping: asyncio.Future[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        removed = _receive_into(self.receive_dir)
        if removed:
            log.warning("removed %d leftover C-STORE temporary file(s) of an interrupted run", removed)
        ae = build_ae(self.cfg, self.policy)
        bridge = Bridge(loop, timeout=max(self.cfg.dimse_timeout, 60) * 10)
        handlers = ArchiveHandlers(self.cfg, bridge, self.ingest, self.engine, self.retriever, self.policy,
                                   self.auth, self.find_timeout)
        open_services = self.policy.open_services()
        if open_services:
            log.warning("DIMSE %s open to every calling AE title (set [dimse.allow] to restrict)",
                        ", ".join(open_services))
        server = ae.make_server((self.cfg.host, self.cfg.port), evt_handlers=handlers.handlers(),
                                server_class=_Server, request_handler=_Handler)
        ae._servers.append(server)  # as AE.start_server does: shutdown() removes it there
        threading.Thread(target=server.serve_forever, name="dimse-acceptor", daemon=True).start()
        self._server = server
        log.info("DIMSE listening as %s on %s:%d", self.cfg.ae_title, self.cfg.host, self.cfg.port)

    def stop(self, timeout: float = 0) -> None:
        """Stop accepting associations (the listening socket closes: new ones are refused), let
        the open ones finish for up to ``timeout`` seconds, then abort the rest. Blocking: run
        it in an executor (the associations' handlers need the event loop meanwhile)."""
        server = self._server
        if server is None:
            return
        with self._stop_lock:
            if not self._accepting_stopped:
                server.shutdown()
                self._accepting_stopped = True
        deadline = time.monotonic() + timeout
        # A connection that never sent its A-ASSOCIATE-RQ (a port probe, a stalled peer) has no
        # work in flight, and would hold the shutdown for pynetdicom's ACSE timeout or ours:
        # closed at once. The others (negotiating, established, releasing) may finish.
        while True:
            for assoc in server.active_associations:
                if _never_associated(assoc):
                    _drop_unassociated(assoc)
            busy = [a for a in server.active_associations if not _never_associated(a)]
            if not busy or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        established = [a for a in busy if a.is_established]
        if busy:
            log.warning("shutdown: aborting %d DIMSE association(s) still open after %g s",
                        len(busy), timeout)
        for assoc in busy:
            if assoc in established:
                assoc.abort()
            else:  # still negotiating or releasing: A-ABORT is not valid in every state
                _drop_unassociated(assoc)
        for assoc in established:
            assoc.join(5)
        self._server = None
        if self.receive_dir is not None:  # a clean stop leaves no empty folder behind either
            try:
                self.receive_dir.rmdir()
            except OSError:  # not empty (an aborted receive), gone, or not ours: next start
                pass
            # pynetdicom's receive folder is process-wide: back to the system's, so that nothing
            # else in this process (another association's SCU) writes into a removed folder.
            _receive_into(None)

    def begin_shutdown(self, timeout: float) -> None:
        """Start :meth:`stop` in the background (with the HTTP listener's shutdown)."""
        if self._stopping is None and self._server is not None:
            self._stopping = asyncio.get_running_loop().run_in_executor(None, self.stop, timeout)

    async def shutdown(self, timeout: float) -> None:
        """:meth:`begin_shutdown` if not done yet, and wait until the listener has stopped."""
        self.begin_shutdown(timeout)
        if self._stopping is not None:
            await self._stopping
