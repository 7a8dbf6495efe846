"""The storage SCU: a batch of files to one destination over one association.

Retry policy lives with the outbox; this module only sends and reports, per file, what the
destination answered (or that no association or presentation context was available).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydicom.errors import InvalidDicomError
from pynetdicom import evt

from marrownode.net.pynetdicom_adapter import (
    abort_quietly,
    can_store_directly,
    disable_nagle,
    park_reactor,
    scu_ae,
    send_files_as_stored,
    store_directly,
)
from marrownode.net.ul import pdu

log = logging.getLogger(__name__)

#: Limit of presentation contexts one requestor may propose.
MAX_CONTEXTS = 128


class SendError(StrEnum):
    """Why a file got no DIMSE status."""

    NO_ASSOCIATION = "no_association"  # no answer: refused connection, timeout, abort
    REJECTED_PERMANENT = "rejected_permanent"  # A-ASSOCIATE-RJ, result permanent
    REJECTED_TRANSIENT = "rejected_transient"  # A-ASSOCIATE-RJ, result transient
    CONTEXT_REFUSED = "context_refused"
    CONNECTION_LOST = "connection_lost"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class OutgoingFile:
    """A file to send, with the outbox row it belongs to."""

    key: int  # outbox row id
    path: Path
    sop_class_uid: str
    transfer_syntax: str


@dataclass(frozen=True)
class SendResult:
    """What the destination answered for one file, or why it answered nothing."""

    key: int
    status: int | None  # DIMSE status, None when never sent
    error: SendError | None = None
    detail: str = ""  # the A-ASSOCIATE-RJ in words, for a rejection


def _why_no_answer(host: str, port: int, timeout: float) -> str:
    """What the peer did instead of answering, in words an administrator can act on: one
    plain TCP connection tells a closed port from a silent peer."""
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 5.0)):
            return (f"{host}:{port} took the connection but did not answer the association "
                    f"request within {timeout:g} s (not a DICOM peer, or hung)")
    except ConnectionRefusedError:
        return f"connection refused by {host}:{port}"
    except TimeoutError:
        return f"no answer from {host}:{port} within {min(timeout, 5.0):g} s"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or type(exc).__name__}"


def _not_associated(association: Any, rejections: list[tuple[int, int, int]], host: str,
                    port: int, timeout: float) -> tuple[SendError, str]:
    """Why no association came of the request: the rejection in words if there was one,
    else what the peer did."""
    if rejections:
        result, source, reason = rejections[0]
        error = (SendError.REJECTED_PERMANENT if result == pdu.REJECTED_PERMANENT
                 else SendError.REJECTED_TRANSIENT)
        return error, pdu.describe_rejection(result, source, reason)
    # The destination answered but accepts none of what we proposed (a batch of one SOP class
    # it does not store): a refusal to record, not a network failure to retry.
    if association.rejected_contexts and not association.accepted_contexts:
        return SendError.CONTEXT_REFUSED, ""
    return SendError.NO_ASSOCIATION, _why_no_answer(host, port, timeout)


def send_batch(
    files: Sequence[OutgoingFile],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str,
    timeout: float = 30.0,
    dimse_timeout: float | None = None,
) -> list[SendResult]:
    """Send files over a single association; one SendResult per file, in order. timeout
    bounds the association request and the network, dimse_timeout each C-STORE's answer
    (timeout when not given)."""
    send_files_as_stored()
    ae = scu_ae(calling_aet)
    ae.acse_timeout = ae.network_timeout = timeout
    ae.dimse_timeout = timeout if dimse_timeout is None else dimse_timeout
    contexts = sorted({(f.sop_class_uid, f.transfer_syntax) for f in files})
    for sop_class, syntax in contexts[:MAX_CONTEXTS]:
        ae.add_requested_context(sop_class, [syntax])
    rejections: list[tuple[int, int, int]] = []

    def answered(event: Any) -> None:
        primitive = event.primitive
        if getattr(primitive, "result", None) in (pdu.REJECTED_PERMANENT, pdu.REJECTED_TRANSIENT):
            rejections.append((primitive.result, primitive.result_source, primitive.diagnostic))

    try:
        association = ae.associate(host, port, ae_title=called_aet,
                                   evt_handlers=[(evt.EVT_ACSE_RECV, answered)])
    except Exception as exc:  # pynetdicom's own errors included: no row may be left unanswered
        log.warning("event=associate_error error=%s", type(exc).__name__)
        return [SendResult(f.key, None, SendError.NO_ASSOCIATION, _what(exc)) for f in files]
    if not association.is_established:
        why = _not_associated(association, rejections, host, port, timeout)
        return [SendResult(f.key, None, *why) for f in files]
    disable_nagle(association)
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in association.accepted_contexts}
    results: list[SendResult] = []
    try:
        direct = can_store_directly(association)
        for number, file in enumerate(files):
            results.append(_send_one(association, file, accepted,
                                     (number % 0xFFFF) + 1 if direct else None, timeout))
    except Exception as exc:
        # Whatever broke the batch (pynetdicom's RuntimeError when the peer went away between
        # two C-STOREs, a reactor error...), the files not yet answered were not delivered.
        log.warning("event=send_batch_interrupted sent=%d of=%d error=%s", len(results),
                    len(files), type(exc).__name__)
        results.extend(SendResult(f.key, None, SendError.CONNECTION_LOST, _what(exc))
                       for f in files[len(results):])
        abort_quietly(association)
    finally:
        _release(association)
    return results


def _what(exc: BaseException) -> str:
    """An exception in one short line (a delivery's last error)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def _send_one(association: Any, file: OutgoingFile, accepted: set[tuple[str, str]],
              message_id: int | None, timeout: float) -> SendResult:
    """One file over the established association: its status, or why it got none. With a
    message_id, written to the socket here (store_directly); without, by pynetdicom."""
    if (file.sop_class_uid, file.transfer_syntax) not in accepted:
        return SendResult(file.key, None, SendError.CONTEXT_REFUSED)
    if not association.is_established:
        return SendResult(file.key, None, SendError.CONNECTION_LOST)
    if not file.path.is_file():
        return SendResult(file.key, None, SendError.UNREADABLE)
    try:
        if message_id is not None:
            status = store_directly(association, file.path, message_id, timeout)
        else:
            park_reactor(association)
            answer = association.send_c_store(file.path)
            status = int(answer.Status) if answer and "Status" in answer else None
    except (OSError, ValueError, AttributeError, InvalidDicomError) as exc:
        log.warning("event=send_error path=%s error=%s", file.path.name, type(exc).__name__)
        return SendResult(file.key, None, SendError.UNREADABLE, _what(exc))
    except RuntimeError as exc:  # it ended between the check and the send, or broke mid-way
        return SendResult(file.key, None, SendError.CONNECTION_LOST, _what(exc))
    if status is None:
        return SendResult(file.key, None, SendError.CONNECTION_LOST)
    return SendResult(file.key, status)


def _release(association: Any) -> None:
    try:
        if association.is_established:
            association.release()
    except Exception:  # the peer went away meanwhile: nothing left to release
        log.debug("event=release_failed")
