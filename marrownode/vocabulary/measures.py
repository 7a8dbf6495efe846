"""How a number was measured: the fat-fraction method, how the marrow was localised."""

from __future__ import annotations

from enum import StrEnum


class FatFractionMethod(StrEnum):
    """Where a fat fraction comes from (each has its own scale and limits)."""

    SCANNER_PDFF = "scanner_pdff"
    WATER_FAT = "water_fat"
    SIGNAL_FAT_FRACTION = "signal_fat_fraction"


#: How each fat-fraction method is named wherever a fat fraction is shown.
FAT_FRACTION_LABELS = {
    FatFractionMethod.SCANNER_PDFF: "scanner proton-density fat fraction (PDFF)",
    FatFractionMethod.WATER_FAT: "fat fraction F/(W+F) from the scanner's water and fat images",
    FatFractionMethod.SIGNAL_FAT_FRACTION: (
        "signal fat fraction (IP-OP)/(2 IP), two-point, 0-50 % scale: above 50 % fat it reads "
        "as 100 minus the fat fraction"),
}


class LocalisationMethod(StrEnum):
    """How the vertebral marrow was found (report.json's marrow.method)."""

    IMAGE = "image"
    SEGMENTATION = "segmentation"
    NONE = "none"


class CompanionKind(StrEnum):
    """A series that joins a Dixon set as evidence (report.json's companions)."""

    POST_CONTRAST = "post_contrast"  # the set's post-contrast twin: same grid and sequence
    FAT_SUPPRESSED = "fat_suppressed"  # STIR / TIRM, T2 with fat saturation, T2 Dixon water


class EnhancementImage(StrEnum):
    """Which image pair an enhancement is measured on."""

    WATER = "water"  # water images: fat cannot dilute the enhancement
    IN_PHASE = "in_phase"  # no water image on both sides: in-phase, diluted by the fat


class FatSuppression(StrEnum):
    """A fat-containing focus on the fat-suppressed series (the seed: complete suppression
    points to a benign lesion)."""

    COMPLETE = "complete"  # no brighter than suppressed normal marrow
    INCOMPLETE = "incomplete"
