"""Deterministic output UIDs: the same source, kind and algorithm version give the same UID, so
re-running or re-sending never makes a second copy in the PACS."""

from __future__ import annotations

import hashlib

from pydicom.uid import UID

from marrownode import ALGORITHM_VERSION


def derived_uid(root: str, *parts: object) -> UID:
    """root + '.' + decimal digest of the parts (and the algorithm version), at most 64 chars."""
    text = "|".join([ALGORITHM_VERSION, *map(str, parts)])
    number = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:16], "big")
    if root == "2.25":
        return UID(f"2.25.{number}")  # ISO/IEC 9834-8 UUID-derived form: 128 bits
    room = 64 - len(root) - 1
    digits = str(number)[:room].lstrip("0") or "1"
    return UID(f"{root}.{digits}")
