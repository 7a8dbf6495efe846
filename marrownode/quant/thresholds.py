"""Which signal-loss threshold applies at a field strength."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from marrownode import defaults
from marrownode.vocabulary import Flag

#: Seed literature (Radiopaedia, docs/domain.md §1): >20 % loss at 1.5 T, >25 % at 3 T is benign.
DEFAULT_THRESHOLDS = defaults.THRESHOLDS


@dataclass(frozen=True)
class ThresholdChoice:
    threshold_percent: float | None
    field_strength_t: float | None
    flag: Flag | None


def select_threshold(
    field_strength_t: float | None,
    table: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS,
    tolerance_t: float = defaults.FIELD_STRENGTH_TOLERANCE_T,
) -> ThresholdChoice:
    """The nearest table entry within tolerance, else no threshold and a flag saying why."""
    if field_strength_t is None or field_strength_t <= 0:
        return ThresholdChoice(None, None, Flag.NO_FIELD_STRENGTH)
    nearest = min(table, key=lambda entry: abs(entry[0] - field_strength_t), default=None)
    if nearest is None or abs(nearest[0] - field_strength_t) > tolerance_t + 1e-9:
        return ThresholdChoice(None, None, Flag.NO_THRESHOLD_FOR_FIELD_STRENGTH)
    return ThresholdChoice(nearest[1], nearest[0], None)
