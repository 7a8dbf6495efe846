"""The receiver's listening socket and TLS: a threading TCP server whose accepted sockets
have Nagle off, that may share its socket with the node's other receiving processes, the
server TLS context of [node.tls], and the rate-limited log of refused connections."""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from marrownode.config import NodeSettings
from marrownode.logs import peer_text
from marrownode.net.stats import ReceiverStats

log = logging.getLogger(__name__)


class ListeningServer(socketserver.ThreadingTCPServer):
    """Accepts connections and runs each association in its own thread. With a balance, it is
    one of the node's receiving processes, which all accept from one listening socket (the
    node's, inherited by the others): each takes a new connection only when it holds the
    fewest, or when the less busy ones have let it wait (ReceiverStats.accept_delay)."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, address: tuple[str, int],
                 serve_connection: Callable[[socket.socket, tuple[str, int]], None],
                 balance: ReceiverStats | None = None,
                 listening_socket: socket.socket | None = None) -> None:
        """listening_socket: the node's, to accept from instead of binding address."""
        self.serve_connection = serve_connection
        self.balance = balance
        super().__init__(address, socketserver.BaseRequestHandler,
                         bind_and_activate=listening_socket is None)
        if listening_socket is not None:
            self.socket.close()
            self.socket = listening_socket
            self.server_address = listening_socket.getsockname()
        if balance is not None:
            # Every process wakes for each connection: the ones that lose the race must get
            # EAGAIN from accept (socketserver then goes back to waiting), not block in it.
            self.socket.setblocking(False)

    def server_bind(self) -> None:
        # Accepted sockets inherit TCP_NODELAY: without it every small C-STORE response waits
        # for Nagle's algorithm.
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        if self.balance is not None:
            delay = self.balance.accept_delay()
            if delay:
                time.sleep(delay)  # a less busy process takes the connection meanwhile
        request = self.socket.accept()  # BlockingIOError when another process took it
        if self.balance is not None:
            self.balance.connection_accepted()
        return request

    def shutdown_request(self, request: Any) -> None:
        """socketserver's one call for every accepted connection, however it ended."""
        try:
            super().shutdown_request(request)
        finally:
            if self.balance is not None:
                self.balance.connection_closed()

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.serve_connection(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("event=connection_error")


class RefusalLog:
    """Refused and evicted connections as rate-limited summaries: the first one at once,
    then one line per reason at most every interval with the count and the busiest peers
    (a flood of connections must not become a flood of log lines)."""

    def __init__(self, interval_seconds: float = 10.0) -> None:
        self.interval = interval_seconds
        self._counts: dict[tuple[str, str], int] = {}
        self._next = 0.0
        self._lock = threading.Lock()

    def note(self, host: str, reason: str) -> None:
        """Count one; log what was counted when the interval has passed."""
        with self._lock:
            key = (reason, host)
            self._counts[key] = self._counts.get(key, 0) + 1
            now = time.monotonic()
            if now < self._next:
                return
            counted, self._counts = self._counts, {}
            self._next = now + self.interval
        by_reason: dict[str, dict[str, int]] = {}
        for (why, peer), count in counted.items():
            by_reason.setdefault(why, {})[peer] = count
        for why, peers in by_reason.items():
            busiest = sorted(peers.items(), key=lambda item: -item[1])[:3]
            log.warning("event=connections_refused reason=%s count=%d peers=%s "
                        "summary_seconds=%.0f", why, sum(peers.values()),
                        ",".join(f"{peer_text(peer)}:{count}" for peer, count in busiest),
                        self.interval)


def build_ssl_context(settings: NodeSettings) -> ssl.SSLContext | None:
    """The server TLS context from [node.tls], or None without TLS."""
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
