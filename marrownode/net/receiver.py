"""The storage SCP: pynetdicom events in, ingest calls out.

The receiving threads do only the durable write (no pixel decoding, no analysis); everything else
happens after the index records it. Association lifecycle events are recorded so the assembler
knows when a sender has finished.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from pydicom import uid as pd_uid
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from marrownode.config import NodeSettings
from marrownode.store.ingest import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    Ingestor,
)

log = logging.getLogger(__name__)

#: Every transfer syntax a scanner or PACS commonly sends, in order of preference: pynetdicom
#: accepts the first of ours the requestor proposes, so lossless compressed data is kept as sent,
#: and lossy syntaxes are accepted only when nothing lossless was offered.
ACCEPTED_TRANSFER_SYNTAXES: list[str] = [
    pd_uid.RLELossless,
    pd_uid.JPEGLSLossless,
    pd_uid.JPEGLosslessSV1,
    pd_uid.JPEGLossless,
    pd_uid.JPEG2000Lossless,
    pd_uid.HTJ2KLossless,
    pd_uid.HTJ2KLosslessRPCL,
    pd_uid.ExplicitVRLittleEndian,
    pd_uid.ImplicitVRLittleEndian,
    pd_uid.DeflatedExplicitVRLittleEndian,
    pd_uid.ExplicitVRBigEndian,
    pd_uid.JPEGBaseline8Bit,
    pd_uid.JPEGExtended12Bit,
    pd_uid.JPEGLSNearLossless,
    pd_uid.JPEG2000,
    pd_uid.HTJ2K,
]

_ASSOCIATION_ID = "_marrownode_association_id"

#: How long pynetdicom's per-association reactor (DUL) sleeps when it finds nothing to do. Its
#: default, 1 ms, is paid twice on every C-STORE round trip (noticing the request, sending the
#: response) and caps one association near 300 img/s on 2 cores. At 0.2 ms a receiver that
#: stores nothing does ~40 % more and marrownode 20-30 % more on one association (nothing
#: measurable on four), for ~6 % of a core more per association held open and silent (see
#: docs/performance.md). pynetdicom has no public setting for it: if a version drops the
#: attribute, this does nothing and receiving is only slower.
DUL_POLL_SECONDS = 0.0002


#: Statuses the storage handler can answer with on failure (each has its own counter).
FAILURE_STATUSES = (STATUS_OUT_OF_RESOURCES, STATUS_DATASET_MISMATCH, STATUS_CANNOT_UNDERSTAND,
                    STATUS_PROCESSING_FAILURE)
_COUNTERS = ("instances", "bytes", "accepted", "rejected")


def shared_counters() -> Any:
    """Counters in shared memory, for every receiving process of one node."""
    context = multiprocessing.get_context("spawn")
    return context.Array("q", len(_COUNTERS) + len(FAILURE_STATUSES), lock=True)


class _Counter:
    """A ReceiverStats counter, read from the shared array by its slot."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = _COUNTERS.index(name)

    def __get__(self, stats: ReceiverStats, owner: type | None = None) -> int:
        return int(stats._counters[self.slot])


class ReceiverStats:
    """Counters the metrics endpoint reads; updated from receiving threads, and from other
    receiving processes when they share the same counters (see shared_counters)."""

    instances = _Counter()
    bytes = _Counter()
    accepted = _Counter()
    rejected = _Counter()

    def __init__(self, counters: Any | None = None) -> None:
        self._counters = counters if counters is not None else shared_counters()

    def add(self, **changes: int) -> None:
        with self._counters.get_lock():
            for name, delta in changes.items():
                self._counters[_COUNTERS.index(name)] += delta

    def failed(self, status: int) -> None:
        slot = FAILURE_STATUSES.index(
            status if status in FAILURE_STATUSES else STATUS_PROCESSING_FAILURE)
        with self._counters.get_lock():
            self._counters[len(_COUNTERS) + slot] += 1

    @property
    def failures(self) -> dict[int, int]:
        counts = self._counters[len(_COUNTERS):]
        return {status: int(n) for status, n in zip(FAILURE_STATUSES, counts, strict=True) if n}


class _ListeningServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY set before it listens (accepted sockets
    inherit it; without it every small C-STORE response waits for Nagle's algorithm)."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()


class _SharedPortServer(_ListeningServer):
    """The same, on a port that the node's other receiving processes listen on too: the kernel
    spreads incoming associations over them (SO_REUSEPORT)."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def build_ssl_context(settings: NodeSettings) -> ssl.SSLContext | None:
    tls = settings.tls
    if tls is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    if tls.ca is not None:
        context.load_verify_locations(cafile=str(tls.ca))
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return context


class Receiver:
    """A running storage SCP bound to the configured address."""

    def __init__(
        self,
        settings: NodeSettings,
        ingestor: Ingestor,
        on_association_end: Callable[[str], None] | None = None,
        stats: ReceiverStats | None = None,
        shared_port: bool = False,
    ) -> None:
        """shared_port: the node receives in several processes on the same port."""
        self.settings = settings
        self.ingestor = ingestor
        self.on_association_end = on_association_end
        self.stats = stats if stats is not None else ReceiverStats()
        self.shared_port = shared_port
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.maximum_associations = settings.max_associations
        self.ae.network_timeout = settings.network_timeout_seconds
        self.ae.acse_timeout = settings.network_timeout_seconds
        self.ae.dimse_timeout = settings.network_timeout_seconds
        self.ae.maximum_pdu_size = settings.maximum_pdu_size
        self.ae.require_called_aet = True
        self.ae.require_calling_aet = list(settings.allowed_calling_aets)
        self.ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("receiver is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        if not self.settings.allowed_calling_aets:
            log.warning("event=allow_list_empty detail=any calling AE title is accepted")
        handlers = [
            (evt.EVT_CONN_OPEN, self._handle_connection),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_RELEASED, self._handle_ended),
            (evt.EVT_ABORTED, self._handle_ended),
        ]
        server = self.ae.make_server(
            (self.settings.host, self.settings.port),
            ssl_context=build_ssl_context(self.settings),
            evt_handlers=handlers,
            server_class=_SharedPortServer if self.shared_port else _ListeningServer,
        )
        # As AE.start_server(block=False) does: the AE shuts it down with the others.
        self.ae._servers.append(server)
        threading.Thread(target=server.serve_forever, name="listener", daemon=True).start()
        self._server = server
        log.info(
            "event=listening ae_title=%s host=%s port=%d tls=%s",
            self.settings.ae_title, self.settings.host, self.port,
            self.settings.tls is not None,
        )

    @property
    def listening(self) -> bool:
        return self._server is not None

    def active_associations(self) -> int:
        return len(self._in_flight())

    def _in_flight(self) -> list:
        """Associations still exchanging data (released ones may linger until the peer closes)."""
        return [a for a in self.ae.active_associations if a.is_established]

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop listening, let in-flight associations finish, then abort what is left."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        deadline = time.monotonic() + grace_seconds
        while self._in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)
        remaining = self._in_flight()
        for association in remaining:
            association.abort()
        if remaining:
            log.warning("event=associations_aborted count=%d", len(remaining))
        self.ae.shutdown()

    # --- handlers (run in pynetdicom's association threads) ------------------------------------

    def _handle_connection(self, event: evt.Event) -> None:
        dul = event.assoc.dul
        if hasattr(dul, "_run_loop_delay"):
            dul._run_loop_delay = DUL_POLL_SECONDS

    def _handle_accepted(self, event: evt.Event) -> None:
        association_id = uuid.uuid4().hex
        setattr(event.assoc, _ASSOCIATION_ID, association_id)
        requestor = event.assoc.requestor
        self.stats.add(accepted=1)
        self.ingestor.index.open_association(
            association_id, requestor.ae_title, f"{requestor.address}:{requestor.port}"
        )
        log.info(
            "event=association_accepted association=%s calling_aet=%s peer=%s",
            association_id, requestor.ae_title, requestor.address,
        )

    def _handle_rejected(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        self.stats.add(rejected=1)
        log.warning(
            "event=association_rejected calling_aet=%s called_aet=%s peer=%s",
            requestor.ae_title, event.assoc.acceptor.ae_title, requestor.address,
        )

    def _handle_ended(self, event: evt.Event) -> None:
        association_id = getattr(event.assoc, _ASSOCIATION_ID, None)
        if association_id is None:
            return
        self.ingestor.index.close_association(association_id)
        log.info("event=association_ended association=%s how=%s",
                 association_id, event.event.name)
        if self.on_association_end is not None:
            self.on_association_end(association_id)

    def _handle_store(self, event: evt.Event) -> int | Dataset:
        association_id = getattr(event.assoc, _ASSOCIATION_ID, None)
        encoded = event.encoded_dataset(include_meta=True)
        try:
            outcome = self.ingestor.store(encoded, association_id)
        except Exception:
            log.exception("event=store_error association=%s", association_id)
            self.stats.failed(STATUS_PROCESSING_FAILURE)
            return STATUS_PROCESSING_FAILURE
        if outcome.status != STATUS_SUCCESS:
            self.stats.failed(outcome.status)
            status = Dataset()
            status.Status = outcome.status
            status.ErrorComment = outcome.comment[:64]
            return status
        self.stats.add(instances=1, bytes=len(encoded))
        return STATUS_SUCCESS
