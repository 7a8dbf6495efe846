"""Vertebral levels as coded anatomy: DICOM CID 7603 "Vertebra" (SNOMED CT), the codes an AI
platform uses for its vertebra segments and marrownode writes as the finding site of a level.
The fused sacral segments have no vertebra code there: S1, S2... are coded as the sacrum."""

from __future__ import annotations

#: SNOMED CT code value -> level name (CID 7603).
VERTEBRA_CODES = {
    "14806007": "C1", "39976000": "C2", "113205007": "C3", "5329002": "C4", "36978003": "C5",
    "36054005": "C6", "87391001": "C7", "64864005": "T1", "53733008": "T2", "1626008": "T3",
    "73071006": "T4", "56401006": "T5", "45296009": "T6", "62487009": "T7", "11068009": "T8",
    "82687006": "T9", "7610001": "T10", "12989004": "T11", "23215003": "T12",
    "66794005": "L1", "14293000": "L2", "36470004": "L3", "11994002": "L4", "49668003": "L5",
}
#: Level name -> SNOMED CT code value (the same table read the other way).
_CODE_OF_LEVEL = {name: value for value, name in VERTEBRA_CODES.items()}
#: SNOMED CT "Sacrum": the finding site of a sacral segment.
SACRUM_CODE = ("54735007", "Sacrum")


def level_code(level: str | None) -> tuple[str, str] | None:
    """(SNOMED CT code value, code meaning) for a named level, or None (V-numbers only)."""
    if level is None:
        return None
    if level.startswith("S"):
        return SACRUM_CODE
    value = _CODE_OF_LEVEL.get(level)
    return (value, f"{level} vertebra") if value else None
