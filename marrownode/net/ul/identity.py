"""The identity of a received Part 10 file (its UIDs and transfer syntax) read straight from the
bytes, for the acknowledgement path.

Only the few top-level elements up to (0020,000E) are walked, and only in the plain
little-endian encodings; anything else (big endian, deflate, a UN of undefined length, a value
that does not fit) returns None and pydicom decides, with its own error reporting. Why not
pydicom for everything: docs/performance.md.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

#: A received file as bytes, or memory-mapped (the walks read element headers only).
Encoded = bytes | bytearray | mmap.mmap

_IMPLICIT_LE = "1.2.840.10008.1.2"
_NOT_WALKED = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})  # BE, deflated
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

_META_WANTED = {0x00020002: "media_sop_class_uid", 0x00020003: "media_sop_instance_uid",
                0x00020010: "transfer_syntax"}
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
    media_sop_class_uid: str = ""  # what the sender's command said; "" when not known


def read_identity(encoded: Encoded) -> Identity | None:
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
                    meta.get("media_sop_instance_uid", found["sop_instance_uid"]),
                    meta.get("media_sop_class_uid", ""))


def _walk(data: Encoded, position: int, explicit: bool, wanted: dict[int, str],
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


def _skip_sequence(data: Encoded, position: int, explicit: bool) -> int:
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


#: Value representations a well-formed explicit VR element can carry (PS3.5 6.2).
_VRS = frozenset(v.encode() for v in (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV"))


def unsound(encoded: Encoded) -> str | None:
    """Why a received Part 10 file does not parse to its end, or None when it does (or when
    its encoding is one this walk leaves to pydicom: big endian, deflate).

    Every element must have a known VR (explicit syntaxes), tags must ascend, every length
    must fit, sequences and items of undefined length must be closed, and the last element
    must end where the bytes end: a data set cut short, one with bytes missing inside Pixel
    Data, implicit-VR bytes on an explicit-VR context or trailing garbage all fail here."""
    if len(encoded) < 144 or encoded[128:132] != b"DICM":
        return "no Part 10 preamble"
    try:
        meta: dict[str, str] = {}
        position = _walk(encoded, 132, True, _META_WANTED, meta, last=0x0002FFFF)
        syntax = meta.get("transfer_syntax", "")
        if not syntax or syntax in _NOT_WALKED:
            return None
        end = _walk_strict(encoded, position, syntax != _IMPLICIT_LE, len(encoded))
    except _NotWalkable as exc:
        return str(exc) or "data set does not parse"
    except struct.error:
        return "data set ends inside an element header"
    if end != len(encoded):
        return f"{len(encoded) - end} bytes after the data set"
    return None


def _header(data: Encoded, position: int, explicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR, value length, value start) of the element at position."""
    group, element = struct.unpack_from("<HH", data, position)
    tag = (group << 16) | element
    vr = bytes(data[position + 4:position + 6])
    if not explicit or group == 0xFFFE:
        (length,) = struct.unpack_from("<I", data, position + 4)
        return tag, b"", length, position + 8
    if vr not in _VRS:
        raise _NotWalkable(f"element ({group:04X},{element:04X}) has no valid VR")
    if vr in _LONG_VRS:
        (length,) = struct.unpack_from("<I", data, position + 8)
        return tag, vr, length, position + 12
    (length,) = struct.unpack_from("<H", data, position + 6)
    return tag, vr, length, position + 8


def _walk_strict(data: Encoded, position: int, explicit: bool, end: int,
                 in_item: bool = False) -> int:
    """Walk elements to end (or to the item's delimiter); return where the walk stopped."""
    previous = -1
    while position < end:
        tag, vr, length, start = _header(data, position, explicit)
        if in_item and tag == _ITEM_END:
            return start
        if tag <= previous:
            raise _NotWalkable(f"tag {tag:08X} out of order")
        previous = tag
        if length == _UNDEFINED:
            if tag == 0x7FE00010:
                position = _skip_fragments(data, start)
            else:  # a sequence (SQ, or UN / implicit VR of undefined length)
                position = _skip_items(data, start, explicit and vr != b"UN")
            continue
        if start + length > end:
            raise _NotWalkable(f"element {tag:08X} runs {start + length - end} bytes past "
                               "the end")
        position = start + length
    if in_item:
        raise _NotWalkable("an item of undefined length is not closed")
    return position


def _skip_items(data: Encoded, position: int, explicit: bool) -> int:
    while True:
        tag, _, length, start = _header(data, position, False)
        if tag == _SEQUENCE_END:
            return start
        if tag != _ITEM:
            raise _NotWalkable(f"tag {tag:08X} inside a sequence")
        if length == _UNDEFINED:
            position = _walk_strict(data, start, explicit, len(data), in_item=True)
        elif start + length > len(data):
            raise _NotWalkable("a sequence item runs past the end")
        else:
            _walk_strict(data, start, explicit, start + length)
            position = start + length


def _skip_fragments(data: Encoded, position: int) -> int:
    """Encapsulated Pixel Data: items of defined length up to the sequence delimiter."""
    while True:
        tag, _, length, start = _header(data, position, False)
        if tag == _SEQUENCE_END:
            return start
        if tag != _ITEM or length == _UNDEFINED or start + length > len(data):
            raise _NotWalkable("encapsulated pixel data is cut short or malformed")
        position = start + length
