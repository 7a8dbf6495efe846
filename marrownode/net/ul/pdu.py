"""DICOM Upper Layer PDUs (PS3.8 section 9.3) for the receiving side: read, parse, encode.

Whole PDUs are read with blocking reads, payloads in bounded pieces; only what an acceptor needs
is here (why the node does not use pynetdicom's acceptor: docs/performance.md).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
PDU_TYPES = frozenset(range(0x01, 0x08))

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# Presentation context results (PS3.8 table 9-18).
ACCEPTANCE, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4

# A-ASSOCIATE-RJ result, source and reason (PS3.8 table 9-21).
REJECTED_PERMANENT, REJECTED_TRANSIENT = 1, 2
SOURCE_SERVICE_USER, SOURCE_ACSE, SOURCE_PRESENTATION = 1, 2, 3
REASON_NO_REASON, REASON_APPLICATION_CONTEXT = 1, 2
REASON_CALLING_AE, REASON_CALLED_AE = 3, 7
REASON_PROTOCOL_VERSION = 2  # with SOURCE_ACSE
REASON_LOCAL_LIMIT = 2  # with SOURCE_PRESENTATION

_REJECT_RESULTS = {REJECTED_PERMANENT: "permanently", REJECTED_TRANSIENT: "transiently"}
_REJECT_SOURCES = {SOURCE_SERVICE_USER: "the service user", SOURCE_ACSE: "the ACSE provider",
                   SOURCE_PRESENTATION: "the presentation provider"}
_REJECT_REASONS = {
    SOURCE_SERVICE_USER: {REASON_NO_REASON: "no reason given",
                          REASON_APPLICATION_CONTEXT: "application context not supported",
                          REASON_CALLING_AE: "calling AE title not recognised",
                          REASON_CALLED_AE: "called AE title not recognised"},
    SOURCE_ACSE: {REASON_NO_REASON: "no reason given",
                  REASON_PROTOCOL_VERSION: "protocol version not supported"},
    SOURCE_PRESENTATION: {1: "temporary congestion", REASON_LOCAL_LIMIT: "local limit exceeded"},
}


def describe_rejection(result: int, source: int, reason: int) -> str:
    """An A-ASSOCIATE-RJ in words, e.g. 'rejected permanently by the service user: called AE
    title not recognised' (unknown codes are named by number)."""
    how = _REJECT_RESULTS.get(result, f"with result {result}")
    who = _REJECT_SOURCES.get(source, f"source {source}")
    why = _REJECT_REASONS.get(source, {}).get(reason, f"reason {reason}")
    return f"rejected {how} by {who}: {why}"


# A-ABORT source and reason (PS3.8 table 9-26).
ABORT_SERVICE_USER, ABORT_SERVICE_PROVIDER = 0, 2
ABORT_NOT_SPECIFIED, ABORT_UNRECOGNIZED_PDU, ABORT_UNEXPECTED_PDU = 0, 1, 2
ABORT_INVALID_PARAMETER = 6

#: Largest A-ASSOCIATE-RQ (or -AC) read: 128 contexts and a user identity fit many times over.
MAX_ASSOCIATE_RQ_BYTES = 256 << 10
#: Largest P-DATA-TF body read when no maximum was announced.
MAX_PDATA_BYTES = 16 << 20
#: One recv at most this much.
_READ_PIECE = 1 << 20


class ProtocolError(Exception):
    """The peer broke the upper layer protocol: the association is aborted with this reason."""

    def __init__(self, message: str, reason: int = ABORT_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class PeerClosed(Exception):
    """The peer closed the connection."""


def _set_deadline(sock: socket.socket, deadline: float | None) -> None:
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    sock.settimeout(left)


def recv_exact(sock: socket.socket, length: int,
               deadline: float | None = None) -> bytes | bytearray:
    """Exactly length bytes from sock, all before deadline (time.monotonic()); PeerClosed if
    the connection ends first. Callers bound length before calling: nothing here is sized
    from the peer alone."""
    buffer = bytearray(length)
    view = memoryview(buffer)
    received = 0
    while received < length:
        _set_deadline(sock, deadline)
        count = sock.recv_into(view[received:], min(length - received, _READ_PIECE))
        if count == 0:
            raise PeerClosed
        received += count
    return buffer


#: The largest body each PDU type may have (PS3.8 9.3): fixed for the short PDUs, a cap for
#: the association request; P-DATA-TF is bounded by the maximum the node announced.
_FIXED_BODY = {A_ASSOCIATE_RJ: 4, A_RELEASE_RQ: 4, A_RELEASE_RP: 4, A_ABORT: 4}


def body_limit(pdu_type: int, max_pdata_length: int) -> int:
    """How long a body of this type may be; ProtocolError for a type that does not exist."""
    if pdu_type not in PDU_TYPES:
        raise ProtocolError(f"unrecognised PDU type 0x{pdu_type:02x}", ABORT_UNRECOGNIZED_PDU)
    if pdu_type in _FIXED_BODY:
        return _FIXED_BODY[pdu_type]
    if pdu_type == P_DATA_TF:
        return max_pdata_length + 6 if max_pdata_length else MAX_PDATA_BYTES
    return MAX_ASSOCIATE_RQ_BYTES


def read_pdu(sock: socket.socket, max_length: int,
             deadline: float | None = None) -> tuple[int, bytes | bytearray]:
    """The next PDU as (type, body), read completely before deadline. max_length: the largest
    P-DATA-TF body the node announced (0: the hard cap). Every length is checked before any
    of the body is read, so a peer claiming gigabytes gets an abort, not an allocation."""
    header = recv_exact(sock, 6, deadline)
    pdu_type = header[0]
    (length,) = struct.unpack_from(">I", header, 2)
    limit = body_limit(pdu_type, max_length)
    if length > limit:
        raise ProtocolError(f"PDU type 0x{pdu_type:02x} of {length} bytes (at most {limit})")
    return pdu_type, recv_exact(sock, length, deadline)


def _items(data: bytes | bytearray | memoryview, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(type, value) of the variable items in data[start:] (1-byte type, 2-byte length)."""
    position = start
    while position < len(data):
        if position + 4 > len(data):
            raise ProtocolError("truncated item header")
        item_type = data[position]
        (length,) = struct.unpack_from(">H", data, position + 2)
        end = position + 4 + length
        if end > len(data):
            raise ProtocolError(f"item 0x{item_type:02x} runs past its PDU")
        yield item_type, bytes(data[position + 4:end])
        position = end


def _text(value: bytes) -> str:
    """A UID or AE title from a PDU field: trailing NULs and surrounding spaces dropped."""
    return value.rstrip(b"\0").decode("ascii", "replace").strip()


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


@dataclass(frozen=True)
class ProposedContext:
    """One presentation context of an A-ASSOCIATE-RQ."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class AssociateRequest:
    """The parts of an A-ASSOCIATE-RQ an acceptor decides on."""

    protocol_version: int
    called_ae: str
    calling_ae: str
    called_field: bytes  # the 16-byte fields, echoed in the A-ASSOCIATE-AC
    calling_field: bytes
    application_context: str
    contexts: tuple[ProposedContext, ...]
    max_pdu_length: int = 0  # the requestor's receive limit; 0: none
    implementation_class_uid: str = ""
    implementation_version: str = ""


def parse_associate_rq(body: bytes | bytearray) -> AssociateRequest:
    """Parse an A-ASSOCIATE-RQ body; ProtocolError names what is malformed."""
    if len(body) < 68:
        raise ProtocolError(f"A-ASSOCIATE-RQ of {len(body)} bytes is shorter than its header")
    (version,) = struct.unpack_from(">H", body, 0)
    called, calling = bytes(body[4:20]), bytes(body[20:36])
    application_context = ""
    contexts: list[ProposedContext] = []
    max_pdu, class_uid, version_name = 0, "", ""
    for item_type, value in _items(body, 68):
        if item_type == 0x10:
            application_context = _text(value)
        elif item_type == 0x20:
            if len(value) < 4:
                raise ProtocolError("presentation context item too short")
            abstract, syntaxes = "", []
            for sub_type, sub_value in _items(value, 4):
                if sub_type == 0x30:
                    abstract = _text(sub_value)
                elif sub_type == 0x40:
                    syntaxes.append(_text(sub_value))
            contexts.append(ProposedContext(value[0], abstract, tuple(syntaxes)))
        elif item_type == 0x50:
            for sub_type, sub_value in _items(value):
                if sub_type == 0x51 and len(sub_value) == 4:
                    (max_pdu,) = struct.unpack(">I", sub_value)
                elif sub_type == 0x52:
                    class_uid = _text(sub_value)
                elif sub_type == 0x55:
                    version_name = _text(sub_value)
    ids = [c.context_id for c in contexts]
    if len(set(ids)) != len(ids) or any(i % 2 == 0 for i in ids):
        raise ProtocolError(f"presentation context IDs must be odd and distinct, got {ids}")
    return AssociateRequest(version, _text(called), _text(calling), called, calling,
                            application_context, tuple(contexts), max_pdu, class_uid,
                            version_name)


@dataclass(frozen=True)
class ContextResult:
    """The acceptor's answer to one proposed presentation context."""

    context_id: int
    result: int
    transfer_syntax: str = ""


@dataclass(frozen=True)
class AssociateAccept:
    """What an A-ASSOCIATE-AC says back."""

    request: AssociateRequest
    results: tuple[ContextResult, ...]
    max_pdu_length: int
    implementation_class_uid: str
    implementation_version: str

    @cached_property
    def accepted(self) -> dict[int, tuple[str, str]]:
        """Accepted context id -> (abstract syntax, transfer syntax)."""
        by_id = {c.context_id: c.abstract_syntax for c in self.request.contexts}
        return {r.context_id: (by_id[r.context_id], r.transfer_syntax)
                for r in self.results if r.result == ACCEPTANCE}

    def encode(self) -> bytes:
        items = [_item(0x10, APPLICATION_CONTEXT.encode())]
        for result in self.results:
            syntax = _item(0x40, result.transfer_syntax.encode())
            items.append(_item(0x21, bytes([result.context_id, 0, result.result, 0]) + syntax))
        user = (_item(0x51, struct.pack(">I", self.max_pdu_length))
                + _item(0x52, self.implementation_class_uid.encode())
                + _item(0x55, self.implementation_version.encode()))
        items.append(_item(0x50, user))
        body = (struct.pack(">HH", 1, 0) + self.request.called_field
                + self.request.calling_field + bytes(32) + b"".join(items))
        return struct.pack(">BBI", A_ASSOCIATE_AC, 0, len(body)) + body


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    return struct.pack(">BBIBBBB", A_ASSOCIATE_RJ, 0, 4, 0, result, source, reason)


def release_rp() -> bytes:
    """A-RELEASE-RP (PS3.8 9.3.7)."""
    return struct.pack(">BBIHH", A_RELEASE_RP, 0, 4, 0, 0)


def abort(source: int, reason: int) -> bytes:
    """A-ABORT (PS3.8 9.3.8)."""
    return struct.pack(">BBIBBBB", A_ABORT, 0, 4, 0, 0, source, reason)


def pdvs(body: bytes | bytearray) -> Iterator[tuple[int, int, memoryview]]:
    """(context id, message control header, fragment) of each PDV in a P-DATA-TF body."""
    view = memoryview(body)
    position = 0
    while position < len(body):
        if position + 6 > len(body):
            raise ProtocolError("truncated PDV header")
        (length,) = struct.unpack_from(">I", body, position)
        end = position + 4 + length
        if length < 2 or end > len(body):
            raise ProtocolError(f"PDV of length {length} does not fit its PDU")
        yield body[position + 4], body[position + 5], view[position + 6:end]
        position = end


def p_data(context_id: int, payload: bytes | bytearray | memoryview, command: bool,
           max_pdu_length: int, last: bool = True) -> bytes:
    """payload as P-DATA-TF PDUs within the peer's max_pdu_length (0: one PDU); last: the
    payload ends its message (its last PDV says so), else more of it follows."""
    room = max(1, len(payload) if not max_pdu_length else max_pdu_length - 6)  # PDV header
    view = memoryview(payload)
    parts: list[bytes | memoryview] = []
    for start in range(0, len(payload), room) or [0]:  # no payload: one empty PDV
        chunk = view[start:start + room]
        final = last and start + room >= len(payload)
        control = (0x01 if command else 0x00) | (0x02 if final else 0x00)
        parts += [struct.pack(">BBIIBB", P_DATA_TF, 0, len(chunk) + 6, len(chunk) + 2,
                              context_id, control), chunk]
    return b"".join(parts)
