"""The identity of a received Part 10 file (its UIDs and transfer syntax) read straight from the
bytes, for the acknowledgement path.

One walk over the element headers (never the values, except the UIDs wanted) gives the
identity and whether the data set parses to its end, in little and big endian alike, with
sequences nested at most MAX_NESTING deep. A deflated data set is inflated (bounded, in
chunks) by the ingest first and walked as explicit little endian. Why not pydicom for
everything: docs/performance.md.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

#: A received file as bytes, or memory-mapped (the walks read element headers only).
Encoded = bytes | bytearray | mmap.mmap

_IMPLICIT_LE = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: Sequences nested deeper than this are refused: real objects nest a handful of levels
#: (Enhanced MR's functional groups: 3; an SR's content tree: tens at most), and a
#: hostile one nested thousands deep would exhaust the stack of any recursive reader.
MAX_NESTING = 64
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

_META_WANTED = {0x00020002: "media_sop_class_uid", 0x00020003: "media_sop_instance_uid",
                0x00020010: "transfer_syntax"}
_DATA_WANTED = {0x00080016: "sop_class_uid", 0x00080018: "sop_instance_uid",
                0x0020000D: "study_uid", 0x0020000E: "series_uid"}


#: What a walk that broke off says (RecursionError cannot happen below MAX_NESTING).
_WALK_ERRORS: dict[type[Exception], str] = {
    struct.error: "data set ends inside an element header",
    UnicodeDecodeError: "a UID is not ASCII",
    RecursionError: "sequences nested too deep",
}


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


@dataclass(frozen=True)
class Examination:
    """What one walk over a received file found: its identity (None when pydicom has to read
    it: UIDs missing) and why it is unsound (None when it parses to its end); deflated: the
    data set is deflated and must be inflated before it can be walked."""

    identity: Identity | None
    problem: str | None
    deflated: bool = False


def examine(encoded: Encoded) -> Examination:
    """Walk the meta once and the data set once, element headers only.

    Every element must have a known VR (explicit syntaxes), tags must ascend, every length
    must fit, sequences and items of undefined length must be closed, and the last element
    must end where the bytes end: a data set cut short, one with bytes missing inside Pixel
    Data, implicit-VR bytes on an explicit-VR context or trailing garbage all fail."""
    if not _has_preamble(encoded):
        return Examination(None, "no Part 10 preamble")
    meta: dict[str, str] = {}
    found: dict[str, str] = {}
    try:
        position = _walk_meta(encoded, meta)
        syntax = meta.get("transfer_syntax", "")
        if not syntax:
            return Examination(None, None)
        if syntax == DEFLATED:
            return Examination(None, None, deflated=True)
        end = _walk_strict(encoded, position, syntax != _IMPLICIT_LE, len(encoded),
                           wanted=_DATA_WANTED, found=found, big=syntax == _BIG_ENDIAN)
    except _NotWalkable as exc:
        return Examination(None, str(exc) or "data set does not parse")
    except (struct.error, UnicodeDecodeError, RecursionError) as exc:
        return Examination(None, _WALK_ERRORS[type(exc)])
    if end != len(encoded):
        return Examination(None, f"{len(encoded) - end} bytes after the data set")
    if not {"study_uid", "series_uid", "sop_instance_uid"} <= found.keys():
        return Examination(None, None)  # pydicom names what is missing
    return Examination(Identity(
        found["study_uid"], found["series_uid"], found["sop_instance_uid"],
        found.get("sop_class_uid", ""), syntax,
        meta.get("media_sop_instance_uid", found["sop_instance_uid"]),
        meta.get("media_sop_class_uid", "")), None)


@dataclass(frozen=True)
class FileMeta:
    """What sending a Part 10 file as stored needs from its meta: the UIDs its C-STORE-RQ
    names, the syntax it is encoded in, and where the data set begins."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    data_set_start: int


def read_file_meta(head: Encoded, size: int) -> FileMeta | None:
    """The meta of a Part 10 file of `size` bytes from its first bytes; None when they do not
    hold the whole meta (or it lacks one of the three UIDs, or no data set follows)."""
    if not _has_preamble(head):
        return None
    meta: dict[str, str] = {}
    try:
        start = _walk_meta(head, meta)
    except (_NotWalkable, struct.error, UnicodeDecodeError):
        return None
    if start >= min(len(head), size) or len(meta) < len(_META_WANTED):
        return None  # the meta may go on past the head, or nothing follows it
    return FileMeta(meta["media_sop_class_uid"], meta["media_sop_instance_uid"],
                    meta["transfer_syntax"], start)


def _has_preamble(encoded: Encoded) -> bool:
    """A 128-byte preamble, 'DICM', and room for at least one meta element."""
    return len(encoded) >= 144 and encoded[128:132] == b"DICM"


def _walk_meta(encoded: Encoded, meta: dict[str, str]) -> int:
    """Walk the File Meta Information group (explicit VR little endian, after the preamble),
    its wanted UIDs into meta; where the data set begins."""
    return _walk_strict(encoded, 132, True, len(encoded), wanted=_META_WANTED, found=meta,
                        last=0x0002FFFF)


def read_identity(encoded: Encoded) -> Identity | None:
    """The identity of a Part 10 file, or None when pydicom has to read it."""
    return examine(encoded).identity


#: Value representations a well-formed explicit VR element can carry (PS3.5 6.2).
_VRS = frozenset(v.encode() for v in (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV"))


#: Element headers, unpacked in one call: (group, element, VR, 16-bit length) explicit,
#: (group, element, 32-bit length) implicit and for items; a long VR's length follows its VR.
_EXPLICIT = {False: struct.Struct("<HH2sH"), True: struct.Struct(">HH2sH")}
_IMPLICIT = {False: struct.Struct("<HHI"), True: struct.Struct(">HHI")}
_LONG_LENGTH = {False: struct.Struct("<I"), True: struct.Struct(">I")}
_GROUP_ELEMENT = {False: struct.Struct("<HH"), True: struct.Struct(">HH")}


def _header(data: Encoded, position: int, explicit: bool,
            big: bool = False) -> tuple[int, bytes, int, int]:
    """(tag, VR, value length, value start) of the element at position."""
    if explicit:
        group, element, vr, length = _EXPLICIT[big].unpack_from(data, position)
        if group != 0xFFFE:
            if vr not in _VRS:
                raise _NotWalkable(f"element ({group:04X},{element:04X}) has no valid VR")
            if vr in _LONG_VRS:
                return ((group << 16) | element, vr,
                        _LONG_LENGTH[big].unpack_from(data, position + 8)[0], position + 12)
            return (group << 16) | element, vr, length, position + 8
    group, element, length = _IMPLICIT[big].unpack_from(data, position)
    return (group << 16) | element, b"", length, position + 8


def _walk_strict(data: Encoded, position: int, explicit: bool, end: int,
                 in_item: bool = False, wanted: dict[int, str] | None = None,
                 found: dict[str, str] | None = None, last: int | None = None,
                 big: bool = False, depth: int = 0) -> int:
    """Walk elements to end (or to the item's delimiter, or to the first tag beyond last);
    return where the walk stopped. Values of wanted tags go into found."""
    group_element = _GROUP_ELEMENT[big]
    previous = -1
    while position < end:
        if last is not None:
            group, element = group_element.unpack_from(data, position)
            if (group << 16 | element) > last:
                return position  # the next group is in another encoding: the caller goes on
        tag, vr, length, start = _header(data, position, explicit, big)
        if in_item and tag == _ITEM_END:
            return start
        if tag <= previous:
            raise _NotWalkable(f"tag {tag:08X} out of order")
        previous = tag
        if length == _UNDEFINED:
            if tag == 0x7FE00010:
                position = _skip_fragments(data, start, big)
            else:  # a sequence (SQ, or UN / implicit VR of undefined length)
                position = _skip_items(data, start, explicit and vr != b"UN", big, depth + 1)
            continue
        if start + length > end:
            raise _NotWalkable(f"element {tag:08X} runs {start + length - end} bytes past "
                               "the end")
        if vr == b"SQ":  # a sequence of defined length: its items are walked too
            _skip_items(data, start, explicit, big, depth + 1, start + length)
        if wanted is not None and found is not None and tag in wanted:
            found[wanted[tag]] = bytes(data[start:start + length]).rstrip(b"\0 ").decode(
                "ascii")
        position = start + length
    if in_item:
        raise _NotWalkable("an item of undefined length is not closed")
    return position


def _skip_items(data: Encoded, position: int, explicit: bool, big: bool, depth: int,
                end: int | None = None) -> int:
    """A sequence's items, to its delimiter (undefined length) or to end (defined length)."""
    if depth > MAX_NESTING:
        raise _NotWalkable(f"sequences nested deeper than {MAX_NESTING}")
    while end is None or position < end:
        tag, _, length, start = _header(data, position, False, big)
        if tag == _SEQUENCE_END and end is None:
            return start
        if tag != _ITEM:
            raise _NotWalkable(f"tag {tag:08X} inside a sequence")
        if length == _UNDEFINED:
            position = _walk_strict(data, start, explicit, len(data) if end is None else end,
                                    in_item=True, big=big, depth=depth)
        elif start + length > (len(data) if end is None else end):
            raise _NotWalkable("a sequence item runs past the end")
        else:
            _walk_strict(data, start, explicit, start + length, big=big, depth=depth)
            position = start + length
    if position != end:
        raise _NotWalkable("a sequence's items run past its length")
    return position


def _skip_fragments(data: Encoded, position: int, big: bool = False) -> int:
    """Encapsulated Pixel Data: items of defined length up to the sequence delimiter."""
    while True:
        tag, _, length, start = _header(data, position, False, big)
        if tag == _SEQUENCE_END:
            return start
        if tag != _ITEM or length == _UNDEFINED or start + length > len(data):
            raise _NotWalkable("encapsulated pixel data is cut short or malformed")
        position = start + length
