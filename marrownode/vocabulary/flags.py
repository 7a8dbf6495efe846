"""Set-level flags: machine-readable, snake_case, each with a reason in the docs and a code
in the SR."""

from __future__ import annotations

from enum import StrEnum


class Flag(StrEnum):
    """Something a reader of a set's numbers must know."""

    IN_PHASE_FIRST = "in_phase_first"
    ROLES_FROM_ECHO_TIME = "roles_from_echo_time"
    FAT_FRACTION_AMBIGUOUS_ABOVE_50 = "fat_fraction_ambiguous_above_50"
    WATER_FAT_SWAP_SUSPECTED = "water_fat_swap_suspected"
    NO_THRESHOLD_FOR_FIELD_STRENGTH = "no_threshold_for_field_strength"
    NO_FIELD_STRENGTH = "no_field_strength"
    WATER_OR_FAT_MISSING = "water_or_fat_missing"
    MARROW_NOT_LOCALISED = "marrow_not_localised"
    MARROW_DARKER_THAN_MUSCLE = "marrow_darker_than_muscle"
    MARROW_DARKER_THAN_DISC = "marrow_darker_than_disc"
    LEVELS_UNCERTAIN = "levels_uncertain"  # the anatomy does not fix the level names
    ENHANCING_FOCUS = "enhancing_focus"  # a focus enhances well beyond normal marrow
    #: a focus or a vertebra bright on the fat-suppressed series against normal marrow
    HIGH_SIGNAL_AFTER_FAT_SATURATION = "high_signal_after_fat_saturation"
    NEW_FOCUS = "new_focus"  # a focus the patient's prior did not have
    FOCUS_GROWN = "focus_grown"  # a focus larger than in the prior, by the rule
    PATTERN_CHANGED = "pattern_changed"  # the set's pattern differs from the prior's
