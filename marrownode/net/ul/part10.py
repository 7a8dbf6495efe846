"""Part 10 packaging: the File Meta Information that turns a received data set into a DICOM
file without decoding it (PS3.10 section 7.1)."""

from __future__ import annotations

import struct

from marrownode import __version__
from marrownode.net.ul.dimse import encode_uid

#: marrownode's Implementation Class UID (UUID-derived, PS3.5 B.2), written into the file meta
#: of every received instance and announced in the A-ASSOCIATE-AC.
IMPLEMENTATION_CLASS_UID = "2.25.72704777526730173852225745436259395750"
IMPLEMENTATION_VERSION = f"MARROWNODE_{__version__}"[:16]



def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
              source_ae: str = "") -> bytes:
    """Preamble, 'DICM' and the File Meta Information group for a received data set."""
    elements = [b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01"]
    for element, vr, value in (
        (0x0002, b"UI", encode_uid(sop_class_uid)),
        (0x0003, b"UI", encode_uid(sop_instance_uid)),
        (0x0010, b"UI", encode_uid(transfer_syntax)),
        (0x0012, b"UI", encode_uid(IMPLEMENTATION_CLASS_UID)),
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
