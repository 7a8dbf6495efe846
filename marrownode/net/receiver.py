"""The storage SCP: sockets, TLS and association lifecycle around the upper layer (net/ul).

Each association is one thread doing blocking reads of whole PDUs; the data set is handed on as
the bytes that arrived, never decoded, and the C-STORE response goes back once the injected
sink says the instance is durable. The receiver imports nothing from store/: the node wires
the sink to ingest, so the same receiver serves the node and its extra receiving processes.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid

from marrownode.config import NodeSettings
from marrownode.logs import peer_text
from marrownode.net.connection import EVICTION_GRACE_SECONDS, Association, Incoming
from marrownode.net.listener import ListeningServer, RefusalLog, build_ssl_context
from marrownode.net.sink import InstanceSink, StoreAnswer
from marrownode.net.stats import ReceiverStats
from marrownode.net.ul import dimse, part10, pdu
from marrownode.net.ul.negotiation import negotiate
from marrownode.net.ul.status import Status

log = logging.getLogger(__name__)


class Receiver:
    """A running storage SCP bound to the configured address."""

    def __init__(
        self,
        settings: NodeSettings,
        sink: InstanceSink,
        stats: ReceiverStats | None = None,
        listening_socket: socket.socket | None = None,
    ) -> None:
        """stats: shared with the node's other receiving processes, if any (they share out
        connections by it); listening_socket: the node's, for those (else bind)."""
        self.settings = settings
        self.sink = sink
        self.stats = stats if stats is not None else ReceiverStats()
        self._listening_socket = listening_socket
        self._ssl_context = build_ssl_context(settings)
        self._server: ListeningServer | None = None
        self._associations: set[Association] = set()
        self._pending = 0  # connections that have not associated (yet)
        self.refusals = RefusalLog()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.listening_socket.getsockname()[1])

    def start(self) -> None:
        if not self.settings.allowed_calling_aets:
            log.warning("event=allow_list_empty detail=any calling AE title is accepted")
        self.stats.start_counting_associations()
        server = ListeningServer((self.settings.host, self.settings.port), self._serve_connection,
                                 self.stats if self.stats.processes > 1 else None,
                                 self._listening_socket)
        threading.Thread(target=server.serve_forever, args=(0.2,), name="listener",
                         daemon=True).start()
        self._server = server
        log.info(
            "event=listening ae_title=%s host=%s port=%d tls=%s",
            self.settings.ae_title, self.settings.host, self.port,
            self.settings.tls is not None,
        )

    @property
    def listening_socket(self) -> socket.socket:
        """What this receiver accepts from (the node's other receiving processes inherit it)."""
        if self._server is None:
            raise RuntimeError("receiver is not started")
        return self._server.socket

    @property
    def listening(self) -> bool:
        return self._server is not None

    def active_associations(self) -> int:
        return len(self._in_flight())

    def _in_flight(self) -> list[Association]:
        """Associations accepted and not yet released or aborted."""
        with self._lock:
            return [a for a in self._associations if a.established]

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop listening, let in-flight associations finish, then abort what is left."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._wait_until_idle(grace_seconds)
        remaining = self._in_flight()
        for association in remaining:
            association.stopping = True
            association.abort(pdu.ABORT_SERVICE_USER, pdu.ABORT_NOT_SPECIFIED)
        if remaining:
            log.warning("event=associations_aborted count=%d", len(remaining))
            self._wait_until_idle(2.0)  # their threads record the end, then leave

    def _wait_until_idle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._in_flight() and time.monotonic() < deadline:
            time.sleep(0.02)

    # --- one association, in its own thread --------------------------------------------------

    def _serve_connection(self, sock: socket.socket, address: tuple[str, int]) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The A-ASSOCIATE-RQ must be whole by this deadline from the connection (not per
        # read): a scanner sends it at once; a trickle is cut off.
        wait = min(self.settings.artim_timeout_seconds, self.settings.request_timeout_seconds)
        artim = time.monotonic() + wait
        sock.settimeout(wait)
        association = Association(sock, address[0], address[1])
        with self._lock:
            victim, full = self._make_room(address[0])
            if not full:
                self._pending += 1
                self._associations.add(association)
        if victim is not None:
            victim.abort(pdu.ABORT_SERVICE_PROVIDER, pdu.ABORT_NOT_SPECIFIED)
            self.refusals.note(victim.host, "evicted_unassociated_connection")
        if full:  # answered at once, without reading anything the peer sent
            self._refuse_unassociated(sock, address[0])
            return
        try:
            if self._ssl_context is not None:
                association.sock = self._ssl_context.wrap_socket(sock, server_side=True)
            self._serve(association, artim)
        except (OSError, ValueError) as exc:  # TLS handshake refused or failed
            log.warning("event=tls_handshake_failed peer=%s error=%s", address[0],
                        type(exc).__name__)
        finally:
            with self._lock:
                if not association.established and not association.evicted:
                    self._pending -= 1
                self._associations.discard(association)
            association.sock.close()  # the TLS wrapper too; the server closes the rest

    def _make_room(self, host: str) -> tuple[Association | None, bool]:
        """(a connection to evict, whether the new one must be refused). The new connection
        needs a slot within its address's share (max_pending_per_address) and within the
        whole (max_pending_connections); where either is full, the connection that has
        waited longest there without associating (at least EVICTION_GRACE_SECONDS) gives
        its slot: a scanner's request arrives within milliseconds, so slow or silent peers
        cannot hold the slots against it. Called under the lock; the caller aborts the
        victim."""
        now = time.monotonic()
        waiting = [a for a in self._associations if not a.established and not a.evicted]
        same_host = [a for a in waiting if a.host == host]
        if len(same_host) >= self.settings.max_pending_per_address:
            pool = same_host
        elif self._pending >= self.settings.max_pending_connections:
            pool = waiting
        else:
            return None, False
        stale = [a for a in pool if now - a.connected_at >= EVICTION_GRACE_SECONDS]
        if not stale:
            return None, True
        victim = min(stale, key=lambda a: a.connected_at)
        victim.evicted = True
        self._pending -= 1
        return victim, False

    def _refuse_unassociated(self, sock: socket.socket, host: str) -> None:
        self.stats.add(rejected=1)  # counted before the peer can see the answer
        with contextlib.suppress(OSError):
            sock.sendall(pdu.associate_rj(pdu.REJECTED_TRANSIENT, pdu.SOURCE_PRESENTATION,
                                          pdu.REASON_LOCAL_LIMIT))
        self.refusals.note(host, "too_many_unassociated_connections")

    def _serve(self, association: Association, artim: float) -> None:
        """Run one association to its end, whatever the peer does: every way out is logged in
        one line, and an established association's end is recorded."""
        ending = "connection_lost"
        try:
            ending = self._run(association, artim)
        except pdu.ProtocolError as exc:
            ending = "protocol_error"
            log.warning("event=protocol_error association=%s peer=%s detail=%s",
                        association.association_id or "-", association.host, peer_text(exc, 160))
            association.abort(pdu.ABORT_SERVICE_PROVIDER, exc.reason)
        except TimeoutError:
            ending = "timeout"
            log.warning("event=association_timeout association=%s peer=%s associated=%s",
                        association.association_id or "-", association.host,
                        association.established)
            association.abort(pdu.ABORT_SERVICE_PROVIDER, pdu.ABORT_NOT_SPECIFIED)
        except (pdu.PeerClosed, OSError):
            pass
        except Exception as exc:  # a bug must cost one association, visibly, never the node
            ending = "internal_error"
            log.error("event=association_error association=%s peer=%s error=%s",
                      association.association_id or "-", association.host, type(exc).__name__)
            association.abort(pdu.ABORT_SERVICE_PROVIDER, pdu.ABORT_NOT_SPECIFIED)
        finally:
            if association.incoming is not None and association.incoming.writer is not None:
                association.incoming.writer.discard()  # half an instance is not kept
            if association.established:
                self._ended(association, "aborted_at_shutdown" if association.stopping
                            else ending)

    def _run(self, association: Association, artim: float) -> str:
        """Negotiate, then serve messages until release or abort; returns how it ended. The
        request must be complete by the ARTIM deadline; after that each PDU must arrive whole
        within the network timeout of the previous one, so a trickle cannot hold a thread."""
        pdu_type, body = pdu.read_pdu(association.sock, 0, artim)
        if pdu_type != pdu.A_ASSOCIATE_RQ:
            raise pdu.ProtocolError(f"PDU type 0x{pdu_type:02x} before association",
                                    pdu.ABORT_UNEXPECTED_PDU)
        request = pdu.parse_associate_rq(body)
        accept = self._accept_or_reject(association, request)
        if accept is None:
            return "rejected"
        message = dimse.MessageAssembler(accept.accepted)
        timeout = self.settings.network_timeout_seconds
        while True:
            pdu_type, body = pdu.read_pdu(association.sock, self.settings.maximum_pdu_size,
                                          time.monotonic() + timeout)
            if pdu_type == pdu.P_DATA_TF:
                for event in message.feed(body):
                    self._handle(association, accept, event)
            elif pdu_type == pdu.A_RELEASE_RQ:
                association.send(pdu.release_rp())
                return "released"
            elif pdu_type == pdu.A_ABORT:
                return "aborted"
            else:
                raise pdu.ProtocolError(f"unexpected PDU type 0x{pdu_type:02x}",
                                        pdu.ABORT_UNEXPECTED_PDU)

    def _rejection(self, request: pdu.AssociateRequest) -> tuple[int, int, int] | None:
        """(result, source, reason) if the association is to be rejected, as PS3.8 9.3.4."""
        allowed = self.settings.allowed_calling_aets
        if not request.protocol_version & 0x0001:
            return pdu.REJECTED_PERMANENT, pdu.SOURCE_ACSE, pdu.REASON_PROTOCOL_VERSION
        if request.application_context != pdu.APPLICATION_CONTEXT:
            return pdu.REJECTED_PERMANENT, pdu.SOURCE_SERVICE_USER, pdu.REASON_APPLICATION_CONTEXT
        if request.called_ae != self.settings.ae_title:
            return pdu.REJECTED_PERMANENT, pdu.SOURCE_SERVICE_USER, pdu.REASON_CALLED_AE
        if allowed and request.calling_ae not in allowed:
            return pdu.REJECTED_PERMANENT, pdu.SOURCE_SERVICE_USER, pdu.REASON_CALLING_AE
        return None

    def _accept_or_reject(self, association: Association,
                          request: pdu.AssociateRequest) -> pdu.AssociateAccept | None:
        rejection = self._rejection(request)
        with self._lock:
            if association.evicted:  # its slot went to a newer connection meanwhile
                raise pdu.PeerClosed("evicted before it associated")
            # max_associations is the node's, over all its receiving processes.
            if rejection is None and not self.stats.open_association(
                    self.settings.max_associations):
                rejection = (pdu.REJECTED_TRANSIENT, pdu.SOURCE_PRESENTATION,
                             pdu.REASON_LOCAL_LIMIT)
            association.established = rejection is None
            if association.established:
                self._pending -= 1
        if rejection is not None:
            self.stats.add(rejected=1)  # counted before the peer can see the answer
            association.send(pdu.associate_rj(*rejection))
            log.warning(
                "event=association_rejected calling_aet=%s called_aet=%s peer=%s reason=%d "
                "detail=%s", peer_text(request.calling_ae), peer_text(request.called_ae),
                association.host, rejection[2],
                pdu.describe_rejection(*rejection).replace(" ", "_"),
            )
            return None
        accept = pdu.AssociateAccept(
            request, tuple(negotiate(c) for c in request.contexts),
            self.settings.maximum_pdu_size, part10.IMPLEMENTATION_CLASS_UID,
            part10.IMPLEMENTATION_VERSION)
        association.association_id = uuid.uuid4().hex
        association.calling_ae = request.calling_ae
        if not self.sink.association_opened(association.association_id, request.calling_ae,
                                            association.peer):
            # The node cannot record it (its disk is full): a transient refusal the
            # sender's retry understands, not an abort without a reason.
            with self._lock:
                association.established = False
                self._pending += 1
            self.stats.close_association()
            self.stats.add(rejected=1)
            association.send(pdu.associate_rj(pdu.REJECTED_TRANSIENT, pdu.SOURCE_PRESENTATION,
                                              pdu.REASON_LOCAL_LIMIT))
            return None
        self.stats.add(accepted=1)  # counted before the peer can see the answer
        association.send(accept.encode())
        log.info("event=association_accepted association=%s calling_aet=%s peer=%s",
                 association.association_id, peer_text(request.calling_ae),
                 association.host)
        return accept

    def _ended(self, association: Association, ending: str) -> None:
        self.stats.close_association()
        log.info("event=association_ended association=%s how=%s",
                 association.association_id, ending)
        self.sink.association_closed(association.association_id)

    def _handle(self, association: Association, accept: pdu.AssociateAccept,
                event: dimse.Event) -> None:
        if isinstance(event, dimse.CommandReceived):
            if event.command.has_data_set:
                association.incoming = self._begin(association, accept, event)
            else:
                self._answer(association, accept, event.context_id, event.command,
                             *self._without_data_set(event.command))
            return
        incoming = association.incoming
        if incoming is None:  # the assembler only emits data after a command
            raise pdu.ProtocolError("data without a command", pdu.ABORT_UNEXPECTED_PDU)
        incoming.received += len(event.data)
        if incoming.writer is not None:
            incoming.writer.write(event.data)
        if event.last:
            association.incoming = None
            status, comment = self._finish(association, incoming)
            self._answer(association, accept, incoming.context_id, incoming.command, status,
                         comment)

    @staticmethod
    def _without_data_set(command: dimse.Command) -> tuple[int, str]:
        if command.field == dimse.C_ECHO_RQ:
            return Status.SUCCESS, ""
        return Status.UNRECOGNIZED_OPERATION, ""

    def _answer(self, association: Association, accept: pdu.AssociateAccept, context_id: int,
                command: dimse.Command, status: int, comment: str) -> None:
        if command.field == dimse.C_CANCEL_RQ or command.field & 0x8000:
            return  # nothing to answer
        response = dimse.response(command, status, comment)
        association.send(pdu.p_data(context_id, response, command=True,
                                    max_pdu_length=accept.request.max_pdu_length))

    def _begin(self, association: Association, accept: pdu.AssociateAccept,
               event: dimse.CommandReceived) -> Incoming:
        """Open somewhere for the data set, or decide now why it will be refused (its bytes
        are then read and dropped, and the refusal answered when the last one arrives)."""
        command = event.command
        abstract_syntax, transfer_syntax = accept.accepted[event.context_id]
        if command.field != dimse.C_STORE_RQ:
            return Incoming(event.context_id, command, None,
                             (Status.UNRECOGNIZED_OPERATION, "only C-STORE carries a data set"))
        refusal = self._refusal(command, abstract_syntax)
        if refusal is not None:
            return Incoming(event.context_id, command, None, refusal)
        target = self.sink.open_instance(association.association_id)
        if isinstance(target, StoreAnswer):
            return Incoming(event.context_id, command, None, (target.status, target.comment))
        target.write(part10.file_meta(command.uid(dimse.AFFECTED_SOP_CLASS),
                                      command.uid(dimse.AFFECTED_SOP_INSTANCE),
                                      transfer_syntax, association.calling_ae))
        return Incoming(event.context_id, command, target, None)

    def _finish(self, association: Association, incoming: Incoming) -> tuple[int, str]:
        """The status for a completely received data set."""
        refusal = incoming.refusal
        if refusal is None and incoming.received == 0:
            refusal = (Status.CANNOT_UNDERSTAND, "C-STORE request without a data set")
        if refusal is not None or incoming.writer is None:
            if incoming.writer is not None:
                incoming.writer.discard()
            status, comment = refusal or (Status.PROCESSING_FAILURE, "")
            self.stats.failed(status)
            log.warning("event=store_refused association=%s status=0x%04X detail=%s",
                        association.association_id, status, peer_text(comment))
            return status, comment
        size = incoming.writer.size
        try:
            answer = self.sink.store(incoming.writer, association.association_id)
        except Exception:
            log.exception("event=store_error association=%s", association.association_id)
            self.stats.failed(Status.PROCESSING_FAILURE)
            return Status.PROCESSING_FAILURE, "internal error while storing"
        if answer.status != Status.SUCCESS:
            self.stats.failed(answer.status)
            return answer.status, answer.comment
        self.stats.add(instances=1, bytes=size)
        return Status.SUCCESS, ""

    @staticmethod
    def _refusal(command: dimse.Command, abstract_syntax: str) -> tuple[int, str] | None:
        """Why a C-STORE request cannot be stored, decided from its command alone: required
        elements missing, or a SOP class other than its presentation context's."""
        missing = command.missing()
        if missing:
            return Status.CANNOT_UNDERSTAND, f"command lacks {', '.join(missing)}"
        if command.uid(dimse.AFFECTED_SOP_CLASS) != abstract_syntax:
            return (Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                    "SOP class differs from the presentation context")
        return None

