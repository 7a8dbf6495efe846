"""Every DIMSE status the node answers with or reads from a peer, with its category.

Modelled on pynetdicom's status.py: a status is a number whose meaning comes from ranges
(PS3.7 Annex C and the storage service's statuses, PS3.4 B.2.3).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Category(StrEnum):
    """What a status means for the request it answers."""

    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"
    CANCEL = "cancel"
    PENDING = "pending"


class Status(IntEnum):
    """The statuses marrownode uses by name."""

    SUCCESS = 0x0000
    # warnings: the peer kept the object
    WARNING = 0x0001
    ATTRIBUTE_LIST_ERROR = 0x0107
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
    COERCION_OF_DATA_ELEMENTS = 0xB000
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
    ELEMENTS_DISCARDED = 0xB006
    # failures
    PROCESSING_FAILURE = 0x0110
    NO_SUCH_SOP_CLASS = 0x0118
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    UNRECOGNIZED_OPERATION = 0x0211
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # cancel
    CANCEL = 0xFE00

    @property
    def category(self) -> Category:
        """The category of this status."""
        return category(self.value)


_WARNINGS = frozenset({0x0001, 0x0107, 0x0116})


def category(code: int) -> Category:
    """The category of any status code, named or not (ranges as in PS3.7 C and PS3.4 B.2.3)."""
    if code == 0x0000:
        return Category.SUCCESS
    if code in _WARNINGS or 0xB000 <= code <= 0xBFFF:
        return Category.WARNING
    if code == 0xFE00:
        return Category.CANCEL
    if code in (0xFF00, 0xFF01):
        return Category.PENDING
    return Category.FAILURE


def kept(code: int) -> bool:
    """The peer stored the object: success or a warning (coercion, elements discarded)."""
    return category(code) in (Category.SUCCESS, Category.WARNING)


def may_pass(code: int) -> bool:
    """A failure worth trying again: out of resources (0xA7xx) or a processing failure."""
    return 0xA700 <= code <= 0xA7FF or code == Status.PROCESSING_FAILURE


def describe(code: int) -> str:
    """'0xA700 (OUT_OF_RESOURCES)' for logs and reasons; the hex alone for unnamed codes."""
    try:
        return f"0x{code:04X} ({Status(code).name})"
    except ValueError:
        return f"0x{code:04X}"
