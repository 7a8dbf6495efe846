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


#: What each status means, in PS3.4's words (B.2.3 for storage, C for the general ones);
#: a range stands for every code in it.
_MEANINGS: tuple[tuple[int, int, str], ...] = (
    (0x0105, 0x0105, "No Such Attribute"),
    (0x0106, 0x0106, "Invalid Attribute Value"),
    (0x0107, 0x0107, "Attribute List Error"),
    (0x0116, 0x0116, "Attribute Value Out of Range"),
    (0x0110, 0x0110, "Processing Failure"),
    (0x0111, 0x0111, "Duplication SOP Instance"),
    (0x0112, 0x0112, "No Such SOP Instance"),
    (0x0113, 0x0113, "No Such Event Type"),
    (0x0114, 0x0114, "No Such Argument"),
    (0x0115, 0x0115, "Invalid Argument Value"),
    (0x0117, 0x0117, "Invalid Object Instance"),
    (0x0118, 0x0118, "No Such SOP Class"),
    (0x0119, 0x0119, "Class-Instance Conflict"),
    (0x0120, 0x0120, "Missing Attribute"),
    (0x0121, 0x0121, "Missing Attribute Value"),
    (0x0122, 0x0122, "Refused: SOP Class Not Supported"),
    (0x0123, 0x0123, "No Such Action"),
    (0x0124, 0x0124, "Refused: Not Authorised"),
    (0x0210, 0x0210, "Duplicate Invocation"),
    (0x0211, 0x0211, "Unrecognised Operation"),
    (0x0212, 0x0212, "Mistyped Argument"),
    (0x0213, 0x0213, "Resource Limitation"),
    (0xA700, 0xA7FF, "Refused: Out of Resources"),
    (0xA900, 0xA9FF, "Data Set Does Not Match SOP Class"),
    (0xB000, 0xB000, "Coercion of Data Elements"),
    (0xB006, 0xB006, "Element Discarded"),
    (0xB007, 0xB007, "Data Set Does Not Match SOP Class"),
    (0xC000, 0xCFFF, "Cannot Understand"),
)


def meaning(code: int) -> str:
    """What a status means in PS3.4's words ("" when the standard gives none)."""
    return next((text for low, high, text in _MEANINGS if low <= code <= high), "")


def in_words(code: int | None) -> str:
    """'0xA700 Failure: Refused: Out of Resources': a status as an operator reads it (the
    console's delivery list)."""
    if code is None:
        return ""
    said = meaning(code)
    return f"0x{code:04X} {category(code).value.capitalize()}" + (f": {said}" if said else "")


def describe(code: int) -> str:
    """'0xA700 (OUT_OF_RESOURCES)' for logs and reasons; the hex alone for unnamed codes."""
    try:
        return f"0x{code:04X} ({Status(code).name})"
    except ValueError:
        return f"0x{code:04X}"
