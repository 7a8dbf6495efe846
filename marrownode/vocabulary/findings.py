"""What the analysis says of the marrow: patterns, focus categories, margins."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Pattern(StrEnum):
    """The marrow's pattern, of a set or of one vertebra (the seed's list; docs/marrow-
    localisation.md gives each rule)."""

    NORMAL = "normal"
    FOCAL = "focal"
    MULTIFOCAL = "multifocal"
    DIFFUSE = "diffuse"
    DIFFUSE_AND_FOCAL = "diffuse_and_focal"
    VARIEGATED = "variegated"
    NOT_ASSESSED = "not_assessed"


class FocusCategory(StrEnum):
    """What a focus (or a measured region) most likely is, from its loss and fat."""

    LOW_SIGNAL_LOSS = "low_signal_loss"  # fat not demonstrated: worrying, not specific
    FAT_CONTAINING = "fat_containing"  # haemangioma, focal fat
    INDETERMINATE = "indeterminate"  # in-phase-first pair within the T2* margin
    EXPECTED_SIGNAL_LOSS = "expected_signal_loss"  # a region with the expected loss


class Endplate(StrEnum):
    """Which endplate of a vertebral body a finding lies along."""

    SUPERIOR = "superior"
    INFERIOR = "inferior"


class Margin(StrEnum):
    """A focus's margin, from the sharpness of its edge."""

    SHARP = "sharp"
    ILL_DEFINED = "ill_defined"


class ChangeStatus(StrEnum):
    """A focus on follow-up against the patient's prior (docs/follow-up.md gives the rule)."""

    NEW = "new"
    GROWN = "grown"
    STABLE = "stable"
    SMALLER = "smaller"
    RESOLVED = "resolved"


class PriorSource(StrEnum):
    """Where the prior came from: the same `process` run, the node's index, or the PACS."""

    INPUTS = "inputs"
    INDEX = "index"
    PACS = "pacs"


#: What each pattern means for the reader (the console and the summary page say the same).
PATTERN_MEANINGS = {
    Pattern.NORMAL: "the expected signal loss: normal or benign marrow",
    Pattern.FOCAL: "one focus without the expected signal loss: worrying for a marrow lesion, "
                   "not specific",
    Pattern.MULTIFOCAL: "several foci without the expected signal loss: worrying, not specific",
    Pattern.DIFFUSE: "no signal loss throughout the marrow: worrying for infiltration",
    Pattern.DIFFUSE_AND_FOCAL: "diffusely abnormal marrow with foci: worrying for infiltration",
    Pattern.VARIEGATED: "many small spots without signal loss: worrying, not specific",
    Pattern.NOT_ASSESSED: "no threshold for the field strength, or no localised marrow",
}


def only_fat_containing(pattern: str | None, categories: Iterable[str]) -> bool:
    """A focal or multifocal set whose every focus contains fat: its little signal loss is the
    fat's own (90 % fat loses about 20 %), the benign pattern of a haemangioma or focal fat."""
    found = list(categories)
    return (pattern in (Pattern.FOCAL, Pattern.MULTIFOCAL) and bool(found)
            and all(category == FocusCategory.FAT_CONTAINING for category in found))


def set_meaning(pattern: str | None, categories: Iterable[str]) -> str:
    """A set's pattern in words for the reader (the summary page and the console say the
    same): PATTERN_MEANINGS, except that fat-containing foci alone are not called worrying."""
    found = list(categories)
    if only_fat_containing(pattern, found):
        foci = "focus" if len(found) == 1 else "foci"
        return (f"fat-containing {foci} (haemangioma, focal fat): fat explains the little "
                "signal loss, not worrying")
    try:
        return PATTERN_MEANINGS.get(Pattern(pattern or ""), "")
    except ValueError:  # no pattern (a failed set), or one this version does not know
        return ""
