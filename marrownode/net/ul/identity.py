"""The identity of a received Part 10 file (its UIDs and transfer syntax) read straight from the
bytes, for the acknowledgement path.

Only the few top-level elements up to (0020,000E) are walked, and only in the plain
little-endian encodings; anything else (big endian, deflate, a UN of undefined length, a value
that does not fit) returns None and pydicom decides, with its own error reporting. Why not
pydicom for everything: docs/performance.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_IMPLICIT_LE = "1.2.840.10008.1.2"
_NOT_WALKED = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})  # BE, deflated
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

_META_WANTED = {0x00020003: "media_sop_instance_uid", 0x00020010: "transfer_syntax"}
_DATA_WANTED = {0x00080016: "sop_class_uid", 0x00080018: "sop_instance_uid",
                0x0020000D: "study_uid", 0x0020000E: "series_uid"}
_LAST_WANTED = 0x0020000E


class _NotWalkable(Exception):
    """Something the walk does not handle: pydicom reads the file instead."""


@dataclass(frozen=True)
class Identity:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    media_sop_instance_uid: str


def read_identity(encoded: bytes) -> Identity | None:
    """The identity of a Part 10 file, or None when pydicom has to read it."""
    if len(encoded) < 144 or encoded[128:132] != b"DICM":
        return None
    try:
        meta: dict[str, str] = {}
        position = _walk(encoded, 132, True, _META_WANTED, meta, last=0x0002FFFF)
        syntax = meta.get("transfer_syntax", "")
        if not syntax or syntax in _NOT_WALKED:
            return None
        found: dict[str, str] = {}
        _walk(encoded, position, syntax != _IMPLICIT_LE, _DATA_WANTED, found, _LAST_WANTED)
    except (_NotWalkable, struct.error, UnicodeDecodeError):
        return None
    if not {"study_uid", "series_uid", "sop_instance_uid"} <= found.keys():
        return None  # pydicom names what is missing
    return Identity(found["study_uid"], found["series_uid"], found["sop_instance_uid"],
                    found.get("sop_class_uid", ""), syntax,
                    meta.get("media_sop_instance_uid", found["sop_instance_uid"]))


def _walk(data: bytes, position: int, explicit: bool, wanted: dict[int, str],
          found: dict[str, str], last: int, in_item: bool = False) -> int:
    """Read elements from position until a tag beyond last (or the end of an item when
    in_item); return where it stopped. Values of wanted tags go into found."""
    end = len(data)
    while position + 8 <= end:
        group, element = struct.unpack_from("<HH", data, position)
        tag = (group << 16) | element
        if in_item and tag == _ITEM_END:
            return position + 8
        if tag > last and not in_item:
            return position
        vr = data[position + 4:position + 6]
        if explicit and group != 0xFFFE:
            if vr in _LONG_VRS:
                (length,) = struct.unpack_from("<I", data, position + 8)
                start = position + 12
            else:
                (length,) = struct.unpack_from("<H", data, position + 6)
                start = position + 8
        else:
            (length,) = struct.unpack_from("<I", data, position + 4)
            start = position + 8
        if length == _UNDEFINED:
            if explicit and vr != b"SQ":
                raise _NotWalkable  # UN or encapsulated data of undefined length
            position = _skip_sequence(data, start, explicit)
            continue
        if start + length > end:
            raise _NotWalkable
        name = wanted.get(tag)
        if name is not None and not in_item:
            found[name] = data[start:start + length].rstrip(b"\0 ").decode("ascii")
        position = start + length
    if in_item:
        raise _NotWalkable
    return position


def _skip_sequence(data: bytes, position: int, explicit: bool) -> int:
    """Skip the items of a sequence of undefined length; return the position after it."""
    while position + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, position)
        tag = (group << 16) | element
        position += 8
        if tag == _SEQUENCE_END:
            return position
        if tag != _ITEM:
            raise _NotWalkable
        if length == _UNDEFINED:
            position = _walk(data, position, explicit, {}, {}, 0xFFFFFFFF, in_item=True)
        else:
            position += length
    raise _NotWalkable
