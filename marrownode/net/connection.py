"""One connection from a requestor as the receiver follows it, and the C-STORE whose data
set is arriving on it (receiver.py serves them)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass

from marrownode.net.sink import InstanceWriter
from marrownode.net.ul import dimse, pdu


@dataclass
class Incoming:
    """The C-STORE whose data set is arriving: where it goes, or why it is refused."""

    context_id: int
    command: dimse.Command
    writer: InstanceWriter | None
    refusal: tuple[int, str] | None
    received: int = 0


#: An unassociated connection younger than this keeps its slot (a request on its way).
EVICTION_GRACE_SECONDS = 1.0


class Association:
    """One connection from a requestor, as the receiver follows it."""

    def __init__(self, sock: socket.socket, host: str, port: int) -> None:
        self.sock = sock
        self.host = host
        self.peer = f"{host}:{port}"  # as the index records it
        self.association_id = ""
        self.calling_ae = ""
        self.established = False
        self.connected_at = time.monotonic()
        self.evicted = False  # a newer connection took its place before it associated
        self.stopping = False  # the node aborts it at shutdown
        self.incoming: Incoming | None = None  # a data set under way
        self._send_lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def abort(self, source: int, reason: int) -> None:
        """Send A-ABORT and close; a blocked read in the association's thread then ends."""
        with contextlib.suppress(OSError):
            self.send(pdu.abort(source, reason))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
