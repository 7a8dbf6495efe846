"""Every use of pynetdicom's private parts, in one place, checked against the versions they
were verified on. An upgrade that moves them is noticed here (and by its test), not as a
silent slowdown or a stalled delivery."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, BinaryIO

import pynetdicom
from pydicom.errors import InvalidDicomError
from pynetdicom import _config

from marrownode.net.ul import dimse, pdu
from marrownode.part10 import FileMeta, read_file_meta

log = logging.getLogger(__name__)

#: pynetdicom major versions whose privates below were verified.
VERIFIED_MAJOR_VERSIONS = frozenset({3})


def verified_version(version: str = pynetdicom.__version__) -> bool:
    """Whether this pynetdicom is one the privates below were verified on."""
    try:
        return int(version.split(".", 1)[0]) in VERIFIED_MAJOR_VERSIONS
    except ValueError:
        return False


if not verified_version():  # pragma: no cover - depends on the installed version
    log.warning("event=pynetdicom_unverified version=%s detail=sending may be slower or stall",
                pynetdicom.__version__)


def log_pdus_only_when_debugging() -> None:
    """Bind pynetdicom's "standard" handlers (a log line formatted for every PDU and DIMSE
    message) to the associations made from now on only when pynetdicom's logger would keep
    them: the node's logging drops them below DEBUG (logs.py), and formatting them is about
    a tenth of the CPU of sending results (measured: 2.03-2.11 s against 1.65-1.93 s for 210
    MB to storescp). A process-wide pynetdicom setting, read when an association starts."""
    debugging = logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG)
    _config.LOG_HANDLER_LEVEL = "standard" if debugging else "none"


def scu_ae(calling_aet: str) -> pynetdicom.AE:
    """The application entity of one of the node's SCUs (sending, echo, prior queries,
    retrieval), with the process-wide settings they all want."""
    log_pdus_only_when_debugging()
    return pynetdicom.AE(ae_title=calling_aet)


def send_files_as_stored() -> None:
    """Make send_c_store(path) stream a file as it is on disk instead of decoding and
    re-encoding it. A process-wide pynetdicom setting: only the sender calls this, and it
    only changes how data sets given as paths are sent."""
    _config.STORE_SEND_CHUNKED_DATASET = True


def disable_nagle(association: Any) -> bool:
    """TCP_NODELAY on an established association's socket (pynetdicom never sets it, and
    every small PDU then waits for Nagle's algorithm); False if the socket is not reachable."""
    transport = getattr(getattr(association, "dul", None), "socket", None)
    sock = getattr(transport, "socket", None)
    if not isinstance(sock, socket.socket):
        return False
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return True


def park_reactor(association: Any, timeout: float = 0.05) -> bool:
    """Make sure the association's reactor is parked before the next C-STORE.

    send_c_store pauses the reactor by clearing its checkpoint and goes ahead once the
    reactor's "paused" flag is set. Just after the previous send_c_store released the reactor,
    that flag can still be set from before: the C-STORE is sent, the reactor wakes, takes the
    response off the queue and the sender waits out the DIMSE timeout (pynetdicom issue #875).
    Closing the checkpoint, then seeing the reactor leave it and come back to it, removes that
    window for one reactor round. Returns False when this pynetdicom lacks the attributes.
    """
    checkpoint = getattr(association, "_reactor_checkpoint", None)
    if checkpoint is None or not hasattr(association, "_is_paused"):
        return False
    checkpoint.clear()
    deadline = time.monotonic() + timeout
    left = False
    while association.is_established and time.monotonic() < deadline:
        if not association._is_paused:
            left = True  # it is past the checkpoint and will stop at it next round
        elif left:
            return True  # back at the closed checkpoint: parked
        time.sleep(0.0001)
    return True


#: Bytes of a file's data set read and written to the socket at once by store_directly: a
#: whole number of PDUs (64 at the 16 KiB most peers accept), one system call.
SEND_BLOCK_BYTES = 1 << 20
#: Bytes read to find the end of a file's meta (a meta is a few hundred bytes).
_META_HEAD_BYTES = 64 << 10


class ConnectionLost(RuntimeError):
    """Writing a C-STORE to the peer failed (reset, closed, or not read within the network
    timeout); the association was aborted, as half a message cannot be taken back."""


def can_store_directly(association: Any) -> bool:
    """Whether this association has every private store_directly uses."""
    transport = getattr(getattr(association, "dul", None), "socket", None)
    provider = getattr(association, "dimse", None)
    return (isinstance(getattr(transport, "socket", None), socket.socket)
            and callable(getattr(provider, "get_msg", None))
            and hasattr(provider, "maximum_pdu_size")
            and hasattr(association, "_reactor_checkpoint")
            and hasattr(association, "_is_paused"))


def store_directly(association: Any, path: Path, message_id: int,
                   timeout: float) -> int | None:
    """C-STORE the file at path as it is on disk, writing its P-DATA-TF PDUs to the socket
    from this thread while pynetdicom's reactor reads the response. The response's status;
    None when no valid response came within the DIMSE timeout (the association is then
    aborted, as pynetdicom's send_c_store does).

    Why: pynetdicom hands every PDU to its reactor thread through a queue and its state
    machine, about 60 us of CPU per 16 KiB PDU: 0.36-0.56 CPU-s for the spine's 90 MB of
    results, against 0.11-0.23 written here (docs/performance.md). Raises OSError,
    InvalidDicomError (not Part 10) or ValueError (no context for its class and syntax) when
    the file cannot be sent and nothing was, and
    ConnectionLost when the peer does not take the message (the association is aborted)."""
    context_id, meta, handle, length = _open_for_store(association, path)
    with handle:
        handle.seek(meta.data_set_start)
        sock: socket.socket = association.dul.socket.socket
        if sock.gettimeout() != timeout:
            sock.settimeout(timeout)  # a peer that stops reading cannot hold this thread
        park_reactor(association)  # the reactor must not take the response (issue #875)
        try:
            _write_message(sock, handle, context_id, length,
                           dimse.store_request(meta.sop_class_uid, meta.sop_instance_uid,
                                               message_id),
                           int(association.dimse.maximum_pdu_size or 0))
            _, response = association.dimse.get_msg(block=True)
        except Exception as exc:  # part of the message may be out: the association is spent
            abort_quietly(association)
            raise ConnectionLost(f"{type(exc).__name__}: {exc}") from exc
        finally:
            association._reactor_checkpoint.set()
    status = getattr(response, "Status", None)
    if (not isinstance(status, int)
            or getattr(response, "MessageIDBeingRespondedTo", None) != message_id):
        abort_quietly(association)
        return None
    return status


def abort_quietly(association: Any) -> None:
    """Abort the association if it is still up; one already gone is not an error."""
    try:
        if association.is_established:
            association.abort()
    except Exception:  # already gone
        log.debug("event=abort_failed")


def _open_for_store(association: Any, path: Path
                    ) -> tuple[int, FileMeta, BinaryIO, int]:
    """The accepted context for the file's class and syntax, its meta, the open file and the
    length of its data set."""
    handle = open(path, "rb")  # noqa: SIM115 - the caller's with block closes it
    try:
        size = os.fstat(handle.fileno()).st_size
        meta = read_file_meta(handle.read(_META_HEAD_BYTES), size)
        if meta is None:
            raise InvalidDicomError(f"{path.name}: no readable Part 10 file meta")
        for context in association.accepted_contexts:
            if (str(context.abstract_syntax) == meta.sop_class_uid
                    and str(context.transfer_syntax[0]) == meta.transfer_syntax):
                return int(context.context_id), meta, handle, size - meta.data_set_start
        raise ValueError(f"{path.name}: no accepted context for {meta.sop_class_uid} in "
                         f"{meta.transfer_syntax}")
    except BaseException:
        handle.close()
        raise


def _write_message(sock: socket.socket, handle: BinaryIO, context_id: int, length: int,
                   command: bytes, max_pdu_length: int) -> None:
    """The command set, then length (> 0: read_file_meta saw a data set) bytes of data set
    from handle, as P-DATA-TF PDUs within the peer's maximum length (0: no limit), a block
    of PDUs per system call (the first carries the command ahead)."""
    room = max_pdu_length - 6 if max_pdu_length else SEND_BLOCK_BYTES  # PDV item header: 6
    block = room * max(1, SEND_BLOCK_BYTES // room)
    ahead = pdu.p_data(context_id, command, True, max_pdu_length)
    left = length
    while left:
        data = handle.read(min(left, block))
        if not data:
            raise OSError(f"the file ended {left} bytes early while being sent")
        left -= len(data)
        pdus = pdu.p_data(context_id, data, False, max_pdu_length, last=not left)
        sock.sendall(ahead + pdus if ahead else pdus)
        ahead = b""
