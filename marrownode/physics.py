"""Chemical-shift physics shared by echo classification and the synthetic scanner."""

from __future__ import annotations

#: Proton gyromagnetic ratio over 2 pi.
GYROMAGNETIC_MHZ_PER_T = 42.577
#: Main fat peak relative to water.
FAT_WATER_SHIFT_PPM = 3.4


def fat_water_shift_hz(field_strength_t: float) -> float:
    """Fat-water frequency offset: about 217 Hz at 1.5 T, 434 Hz at 3 T."""
    return FAT_WATER_SHIFT_PPM * GYROMAGNETIC_MHZ_PER_T * field_strength_t


def fat_water_period_ms(field_strength_t: float) -> float:
    """Time for fat and water to come back in phase: the in-phase echo spacing."""
    return 1000.0 / fat_water_shift_hz(field_strength_t)
