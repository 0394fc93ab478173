"""The DIMSE listener: a pynetdicom AE with the archive's services and association policy.

It runs in pynetdicom's own threads beside the HTTP server; :mod:`dimse.handlers` bridges each
request to the archive's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from archive.config import DimseConfig
from archive.ingest import Ingest
from archive.retrieve import Retriever
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


def build_ae(cfg: DimseConfig, policy: AccessPolicy) -> AE:
    ae = AE(ae_title=cfg.ae_title)
    ae.maximum_associations = cfg.max_associations
    ae.acse_timeout = cfg.acse_timeout
    ae.dimse_timeout = cfg.dimse_timeout
    ae.network_timeout = cfg.network_timeout
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        # SCP for C-STORE; and, with role selection, SCU on a C-GET requester's association.
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES,
                                 scu_role=True, scp_role=True)
    for uid in QUERY_RETRIEVE:
        ae.add_supported_context(uid)
    required = policy.association_ae_titles()
    if required is not None:
        ae.require_calling_aet = required
    return ae


class DimseServer:
    def __init__(self, cfg: DimseConfig, ingest: Ingest, engine: AsyncEngine, retriever: Retriever) -> None:
        self.cfg = cfg
        self.policy = AccessPolicy({"store": cfg.allow.store, "query": cfg.allow.query,
                                    "retrieve": cfg.allow.retrieve})
        self.ingest = ingest
        self.engine = engine
        self.retriever = retriever
        self._server: Any = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        ae = build_ae(self.cfg, self.policy)
        bridge = Bridge(loop, timeout=max(self.cfg.dimse_timeout, 60) * 10)
        handlers = ArchiveHandlers(self.cfg, bridge, self.ingest, self.engine, self.retriever, self.policy)
        open_services = self.policy.open_services()
        if open_services:
            log.warning("DIMSE %s open to every calling AE title (set [dimse.allow] to restrict)",
                        ", ".join(open_services))
        self._server = ae.start_server((self.cfg.host, self.cfg.port), block=False,
                                       evt_handlers=handlers.handlers())
        log.info("DIMSE listening as %s on %s:%d", self.cfg.ae_title, self.cfg.host, self.cfg.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
