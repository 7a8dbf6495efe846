"""DIMSE command sets (PS3.7 section 9.3, 9.1.5) for the receiving side and the C-STORE-RQ the
sender writes, and the joining of PDV fragments into messages.

Command sets are always Implicit VR Little Endian; the few a storage SCP reads and writes are
parsed and encoded here directly.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass

from marrownode.net.ul import pdu

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATA_SET = 0x0101
STATUS_UNRECOGNIZED_OPERATION = 0x0211

_COMMAND_GROUP_LENGTH = 0x00000000
AFFECTED_SOP_CLASS = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
PRIORITY = 0x00000700
MESSAGE_ID_RESPONDED_TO = 0x00000120
DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE = 0x00001000

#: A command set is a few hundred bytes; one larger than this is not a command.
MAX_COMMAND_BYTES = 64 << 10


class CommandError(ValueError):
    """A command set that cannot be parsed."""


@dataclass(frozen=True)
class Command:
    """A received command set, by tag (group 0000 elements only)."""

    elements: dict[int, bytes]

    @classmethod
    def parse(cls, encoded: bytes) -> Command:
        elements: dict[int, bytes] = {}
        position = 0
        while position < len(encoded):
            if position + 8 > len(encoded):
                raise CommandError("truncated command element")
            group, element, length = struct.unpack_from("<HHI", encoded, position)
            start = position + 8
            if start + length > len(encoded):
                raise CommandError(f"command element ({group:04X},{element:04X}) runs past")
            elements[(group << 16) | element] = encoded[start:start + length]
            position = start + length
        if COMMAND_FIELD not in elements:
            raise CommandError("command set without Command Field (0000,0100)")
        return cls(elements)

    def us(self, tag: int, default: int = 0) -> int:
        value = self.elements.get(tag)
        return struct.unpack("<H", value[:2])[0] if value and len(value) >= 2 else default

    def uid(self, tag: int) -> str:
        """A UID element's value; "" when absent or not a UID (digits and dots, at most 64),
        so nothing a peer wrote there reaches a response, a file name or a log unchecked."""
        value = self.elements.get(tag, b"").rstrip(b"\0 ")
        if not value or len(value) > 64 or value.strip(b"0123456789."):
            return ""
        return value.decode("ascii")

    def missing(self) -> list[str]:
        """Required elements (PS3.7 9.3.1.1 for C-STORE-RQ) that this request lacks."""
        if self.field != C_STORE_RQ:
            return []
        required = {"Affected SOP Class UID": self.uid(AFFECTED_SOP_CLASS),
                    "Affected SOP Instance UID": self.uid(AFFECTED_SOP_INSTANCE),
                    "Message ID": MESSAGE_ID in self.elements,
                    "Priority": PRIORITY in self.elements}
        return [name for name, present in required.items() if not present]

    @property
    def field(self) -> int:
        return self.us(COMMAND_FIELD)

    @property
    def message_id(self) -> int:
        return self.us(MESSAGE_ID)

    @property
    def has_data_set(self) -> bool:
        return self.us(DATA_SET_TYPE, NO_DATA_SET) != NO_DATA_SET


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def encode_uid(value: str) -> bytes:
    """A UID value padded with NUL to even length (PS3.5 9.1)."""
    encoded = value.encode("ascii")
    return encoded + b"\0" if len(encoded) % 2 else encoded


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def response(request: Command, status: int, comment: str = "") -> bytes:
    """The encoded response to request: C-STORE-RSP, C-ECHO-RSP, or the request's own
    response type with the given status."""
    elements = [_element(AFFECTED_SOP_CLASS, encode_uid(request.uid(AFFECTED_SOP_CLASS))),
                _element(COMMAND_FIELD, _us(request.field | 0x8000)),
                _element(MESSAGE_ID_RESPONDED_TO, _us(request.message_id)),
                _element(DATA_SET_TYPE, _us(NO_DATA_SET)),
                _element(STATUS, _us(status))]
    if comment:
        text = comment[:64].encode("ascii", "replace")
        elements.append(_element(ERROR_COMMENT, text + b" " * (len(text) % 2)))
    if AFFECTED_SOP_INSTANCE in request.elements:
        elements.append(_element(AFFECTED_SOP_INSTANCE,
                                 encode_uid(request.uid(AFFECTED_SOP_INSTANCE))))
    return _command_set(elements)


def store_request(sop_class_uid: str, sop_instance_uid: str, message_id: int,
                  priority: int = 0) -> bytes:
    """The encoded C-STORE-RQ command set (PS3.7 9.3.1.1) for a data set that follows."""
    elements = [_element(AFFECTED_SOP_CLASS, encode_uid(sop_class_uid)),
                _element(COMMAND_FIELD, _us(C_STORE_RQ)),
                _element(MESSAGE_ID, _us(message_id & 0xFFFF)),
                _element(PRIORITY, _us(priority)),
                _element(DATA_SET_TYPE, _us(0x0000)),
                _element(AFFECTED_SOP_INSTANCE, encode_uid(sop_instance_uid))]
    return _command_set(elements)


def _command_set(elements: list[bytes]) -> bytes:
    """Encoded elements (in tag order) behind their Command Group Length."""
    body = b"".join(elements)
    return _element(_COMMAND_GROUP_LENGTH, struct.pack("<I", len(body))) + body


@dataclass(frozen=True)
class CommandReceived:
    """A complete command set; when it has a data set, DataFragments follow."""

    context_id: int
    command: Command


@dataclass(frozen=True)
class DataFragment:
    """A piece of the current command's data set, handed on as it arrives (never joined)."""

    context_id: int
    data: memoryview
    last: bool


Event = CommandReceived | DataFragment


class MessageAssembler:
    """Turns PDVs into events: a command once its fragments are complete, then each data-set
    fragment as it comes, so a data set of any size never has to be in memory at once."""

    def __init__(self, accepted_context_ids: Collection[int]) -> None:
        self.accepted = accepted_context_ids
        self._command_parts: list[bytes] = []
        self._command_size = 0
        self._expecting_data: int | None = None  # the context whose data set is under way

    def feed(self, body: bytes | bytearray) -> list[Event]:
        """The events in one P-DATA-TF body, in order."""
        events: list[Event] = []
        for context_id, control, fragment in pdu.pdvs(body):
            if context_id not in self.accepted:
                raise pdu.ProtocolError(f"PDV on presentation context {context_id}, which was "
                                        "not accepted")
            if control & 0x01:
                events += self._command_fragment(context_id, control, fragment)
            else:
                if self._expecting_data != context_id:
                    raise pdu.ProtocolError("a data set fragment without its command",
                                            pdu.ABORT_UNEXPECTED_PDU)
                last = bool(control & 0x02)
                if last:
                    self._expecting_data = None
                events.append(DataFragment(context_id, fragment, last))
        return events

    def _command_fragment(self, context_id: int, control: int,
                          fragment: memoryview) -> list[Event]:
        if self._expecting_data is not None:
            raise pdu.ProtocolError("a command before the previous data set ended",
                                    pdu.ABORT_UNEXPECTED_PDU)
        self._command_size += len(fragment)
        if self._command_size > MAX_COMMAND_BYTES:
            raise pdu.ProtocolError(f"command set over {MAX_COMMAND_BYTES} bytes")
        self._command_parts.append(bytes(fragment))
        if not control & 0x02:
            return []
        try:
            command = Command.parse(b"".join(self._command_parts))
        except CommandError as exc:
            raise pdu.ProtocolError(str(exc)) from exc
        finally:
            self._command_parts, self._command_size = [], 0
        if command.has_data_set:
            self._expecting_data = context_id
        return [CommandReceived(context_id, command)]
