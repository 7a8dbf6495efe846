"""The storage SCU: a batch of files to one destination over one association.

Retry policy lives with the outbox; this module only sends and reports, per file, what the
destination answered (or that no association or presentation context was available).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config

log = logging.getLogger(__name__)

#: Limit of presentation contexts one requestor may propose.
MAX_CONTEXTS = 128

# Send files as they are on disk, without decoding and re-encoding them.
_config.STORE_SEND_CHUNKED_DATASET = True


def park_reactor(association: Any, timeout: float = 0.05) -> None:
    """Make sure pynetdicom's association reactor is parked before the next C-STORE.

    send_c_store pauses the reactor by clearing its checkpoint and goes ahead once the reactor's
    "paused" flag is set. Just after the previous send_c_store released the reactor, that flag
    can still be set from before: the C-STORE is sent, the reactor wakes, takes the response
    off the queue ("Received unexpected C-STORE service message") and the sender waits out the
    DIMSE timeout (pynetdicom issue #875; here about one C-STORE in 2,000). Closing the
    checkpoint, then seeing the reactor leave it and come back to it, removes that window for
    the price of one reactor round (about 1 ms). Private attributes: if a pynetdicom version
    lacks them this does nothing.
    """
    checkpoint = getattr(association, "_reactor_checkpoint", None)
    if checkpoint is None or not hasattr(association, "_is_paused"):
        return
    checkpoint.clear()
    deadline = time.monotonic() + timeout
    left = False
    while association.is_established and time.monotonic() < deadline:
        if not association._is_paused:
            left = True  # it is past the checkpoint and will stop at it next round
        elif left:
            return  # back at the closed checkpoint: parked
        time.sleep(0.0001)


@dataclass(frozen=True)
class OutgoingFile:
    key: int  # outbox row id
    path: Path
    sop_class_uid: str
    transfer_syntax: str


@dataclass(frozen=True)
class SendResult:
    key: int
    status: int | None  # DIMSE status, None when never sent
    error: str = ""  # 'no_association', 'context_refused', 'connection_lost', 'unreadable'


def send_batch(
    files: Sequence[OutgoingFile],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str,
    timeout: float = 30.0,
) -> list[SendResult]:
    """Send files over a single association; one SendResult per file, in order."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    contexts = sorted({(f.sop_class_uid, f.transfer_syntax) for f in files})
    for sop_class, syntax in contexts[:MAX_CONTEXTS]:
        ae.add_requested_context(sop_class, [syntax])
    association = ae.associate(host, port, ae_title=called_aet)
    if not association.is_established:
        # The destination answered but accepts none of what we proposed (a batch of one SOP
        # class it does not store): a refusal to record, not a network failure to retry.
        refused_all = bool(association.rejected_contexts) and not association.accepted_contexts
        error = "context_refused" if refused_all else "no_association"
        return [SendResult(f.key, None, error) for f in files]
    sock = association.dul.socket.socket if association.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in association.accepted_contexts}
    results: list[SendResult] = []
    try:
        for file in files:
            if (file.sop_class_uid, file.transfer_syntax) not in accepted:
                results.append(SendResult(file.key, None, "context_refused"))
                continue
            if not association.is_established:
                results.append(SendResult(file.key, None, "connection_lost"))
                continue
            if not file.path.is_file():
                results.append(SendResult(file.key, None, "unreadable"))
                continue
            park_reactor(association)
            try:
                status = association.send_c_store(file.path)
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("event=send_error path=%s error=%s", file.path.name, exc)
                results.append(SendResult(file.key, None, "unreadable"))
                continue
            if status and "Status" in status:
                results.append(SendResult(file.key, int(status.Status)))
            else:
                results.append(SendResult(file.key, None, "connection_lost"))
    finally:
        if association.is_established:
            association.release()
    return results
