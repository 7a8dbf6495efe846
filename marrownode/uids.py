"""UIDs the node makes and UIDs it files by.

Deterministic output UIDs: the same source, kind and algorithm version give the same UID, so
re-running or re-sending never makes a second copy in the PACS. And a UID as a file-name
component that can never escape its folder. Below report.py, results/, store/ and net/: each
of them uses it and it uses none of them."""

from __future__ import annotations

import hashlib
import re

from pydicom.uid import UID

from marrownode import ALGORITHM_VERSION

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def derived_uid(root: str, *parts: object) -> UID:
    """root + '.' + decimal digest of the parts (and the algorithm version), at most 64 chars."""
    text = "|".join([ALGORITHM_VERSION, *map(str, parts)])
    number = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:16], "big")
    if root == "2.25":
        return UID(f"2.25.{number}")  # ISO/IEC 9834-8 UUID-derived form: 128 bits
    room = 64 - len(root) - 1
    digits = str(number)[:room].lstrip("0") or "1"
    return UID(f"{root}.{digits}")


def safe_component(uid: str) -> str:
    """A file-name component for a UID: the UID itself when it is a valid UID, else a hash.

    A valid UID contains only digits and dots and at most 64 characters, so it cannot name a
    parent directory or a hidden file; anything else ('../../etc/x', 200 characters, NUL bytes)
    is replaced by a digest that is stable for the same input.
    """
    if len(uid) <= 64 and _UID_RE.fullmatch(uid):
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]
