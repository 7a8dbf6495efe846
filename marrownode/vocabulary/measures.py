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
