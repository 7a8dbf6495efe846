"""DIMSE command sets (PS3.7 section 9.3, 9.1.5) and Part 10 file meta for the receiving side.

Command sets are always Implicit VR Little Endian; the few a storage SCP reads and writes are
parsed and encoded here directly. The file meta turns a received data set into a DICOM file
without decoding it (PS3.10 section 7.1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from marrownode import __version__

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATA_SET = 0x0101
STATUS_UNRECOGNIZED_OPERATION = 0x0211

_COMMAND_GROUP_LENGTH = 0x00000000
AFFECTED_SOP_CLASS = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_RESPONDED_TO = 0x00000120
DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE = 0x00001000

#: marrownode's Implementation Class UID (UUID-derived, PS3.5 B.2), written into the file meta
#: of every received instance and announced in the A-ASSOCIATE-AC.
IMPLEMENTATION_CLASS_UID = "2.25.72704777526730173852225745436259395750"
IMPLEMENTATION_VERSION = f"MARROWNODE_{__version__}"[:16]


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
        return self.elements.get(tag, b"").rstrip(b"\0 ").decode("ascii", "replace")

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


def _uid(value: str) -> bytes:
    encoded = value.encode("ascii")
    return encoded + b"\0" if len(encoded) % 2 else encoded


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def response(request: Command, status: int, comment: str = "") -> bytes:
    """The encoded response to request: C-STORE-RSP, C-ECHO-RSP, or the request's own
    response type with the given status."""
    elements = [_element(AFFECTED_SOP_CLASS, _uid(request.uid(AFFECTED_SOP_CLASS))),
                _element(COMMAND_FIELD, _us(request.field | 0x8000)),
                _element(MESSAGE_ID_RESPONDED_TO, _us(request.message_id)),
                _element(DATA_SET_TYPE, _us(NO_DATA_SET)),
                _element(STATUS, _us(status))]
    if comment:
        text = comment[:64].encode("ascii", "replace")
        elements.append(_element(ERROR_COMMENT, text + b" " * (len(text) % 2)))
    if AFFECTED_SOP_INSTANCE in request.elements:
        elements.append(_element(AFFECTED_SOP_INSTANCE,
                                 _uid(request.uid(AFFECTED_SOP_INSTANCE))))
    body = b"".join(elements)
    return _element(_COMMAND_GROUP_LENGTH, struct.pack("<I", len(body))) + body


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
              source_ae: str = "") -> bytes:
    """Preamble, 'DICM' and the File Meta Information group for a received data set."""
    elements = [b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01"]
    for element, vr, value in (
        (0x0002, b"UI", _uid(sop_class_uid)),
        (0x0003, b"UI", _uid(sop_instance_uid)),
        (0x0010, b"UI", _uid(transfer_syntax)),
        (0x0012, b"UI", _uid(IMPLEMENTATION_CLASS_UID)),
        (0x0013, b"SH", _padded(IMPLEMENTATION_VERSION)),
        (0x0016, b"AE", _padded(source_ae)),
    ):
        if value:
            elements.append(struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value)
    group = b"".join(elements)
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
    return b"\0" * 128 + b"DICM" + length + group


def _padded(text: str) -> bytes:
    encoded = text.encode("ascii", "replace")
    return encoded + b" " * (len(encoded) % 2)
