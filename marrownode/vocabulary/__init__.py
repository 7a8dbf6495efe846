"""The clinical and technical vocabulary of marrownode, one module per concern, as StrEnums.

A member compares equal to its text and is written as that text in JSON, the index and the
SR lookups, so report.json keeps its words; a misspelt member is an AttributeError that mypy
sees, where a misspelt string passed silently. The words are report.json's contract
(docs/architecture.md): add, never rename. Pure Python: every room may use it (quant/ too).
"""

from marrownode.vocabulary.findings import (
    PATTERN_MEANINGS,
    ChangeStatus,
    Endplate,
    FocusCategory,
    Margin,
    Pattern,
    PriorSource,
    only_fat_containing,
    set_meaning,
)
from marrownode.vocabulary.flags import Flag
from marrownode.vocabulary.measures import (
    FAT_FRACTION_LABELS,
    CompanionKind,
    EnhancementImage,
    FatFractionMethod,
    FatSuppression,
    LocalisationMethod,
)
from marrownode.vocabulary.outputs import OutputKind
from marrownode.vocabulary.reasons import RegionRefusal

__all__ = [
    "FAT_FRACTION_LABELS",
    "PATTERN_MEANINGS",
    "ChangeStatus",
    "CompanionKind",
    "Endplate",
    "EnhancementImage",
    "FatFractionMethod",
    "FatSuppression",
    "Flag",
    "FocusCategory",
    "LocalisationMethod",
    "Margin",
    "OutputKind",
    "Pattern",
    "PriorSource",
    "RegionRefusal",
    "only_fat_containing",
    "set_meaning",
]
