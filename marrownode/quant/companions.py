"""Enhancement after contrast and signal after fat saturation, per vertebra and per focus,
against the patient's own normal marrow (pure numpy; docs/companions.md has the rules).

No absolute cut-off is agreed: normal vertebral marrow enhances by about 20 % to 90 % on T1
(more in the young and in red marrow), and its signal on STIR or fat-saturated T2 depends on
the sequence. So every rule compares a region with the normal marrow of the same study and
series: the bodies called normal (no focus, loss above the threshold), outside any focus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from marrownode.vocabulary import FatSuppression, Flag, FocusCategory, Pattern

#: At least this many finite voxels make a region's median.
MIN_VOXELS = 10


@dataclass(frozen=True)
class CompanionRules:
    """The numbers the flags use (docs/companions.md says why these)."""

    #: Enhancing focus: at least this many percentage points above normal marrow ...
    enhancing_points_above_normal: float = 20.0
    #: ... and at least this many times normal marrow's enhancement (when that is positive).
    enhancing_ratio_to_normal: float = 1.5
    #: High signal after fat saturation: at least this many times normal marrow's signal.
    high_signal_ratio: float = 1.5
    #: Complete suppression: a fat-containing focus no brighter than this times normal marrow.
    complete_suppression_ratio: float = 1.0
    #: A series is used when it covers at least this share of the localised marrow.
    min_coverage: float = 0.5


DEFAULT_RULES = CompanionRules()


@dataclass(frozen=True)
class RegionMeasures:
    """One vertebra's or focus's numbers from the companion series (None: not measured)."""

    enhancement_percent: float | None = None
    enhancement_ratio_to_normal: float | None = None
    fat_suppressed_ratio: float | None = None


@dataclass
class CompanionMeasures:
    """Everything measured on a set's companions, with the normal-marrow references."""

    vertebrae: list[RegionMeasures]
    foci: list[RegionMeasures]
    fat_suppression: list[FatSuppression | None]
    normal_reference: str
    normal_enhancement_percent: float | None = None
    normal_fat_suppressed_signal: float | None = None
    coverage: dict[str, float] = field(default_factory=dict)
    flags: list[Flag] = field(default_factory=list)


def _median(values: np.ndarray, mask: np.ndarray) -> float | None:
    picked = values[mask]
    picked = picked[np.isfinite(picked)]
    return float(np.median(picked)) if picked.size >= MIN_VOXELS else None


def coverage(values: np.ndarray, marrow: np.ndarray) -> float:
    """The share of the localised marrow where the resampled series has a value."""
    count = int(marrow.sum())
    return float(np.isfinite(values[marrow]).sum()) / count if count else 0.0


def normal_marrow(bodies: np.ndarray, patterns: list[Pattern],
                  focus_masks: list[np.ndarray]) -> tuple[np.ndarray, str]:
    """The study's normal vertebral marrow, and what it is: the bodies called normal,
    outside every focus; when none is normal, every body outside the foci."""
    outside = np.ones(bodies.shape, dtype=bool)
    for mask in focus_masks:
        outside &= ~mask
    numbers = [n for n, p in enumerate(patterns, start=1) if p == Pattern.NORMAL]
    normal = np.isin(bodies, numbers) & outside
    if int(normal.sum()) >= MIN_VOXELS:
        return normal, f"the {len(numbers)} normal vertebral bodies, outside any focus"
    return (bodies > 0) & outside, "every localised body outside the foci (none is normal)"


def _enhancement(pre: np.ndarray, post: np.ndarray, mask: np.ndarray) -> float | None:
    """(post - pre) / pre of the region's medians, in percent: medians of each image rather
    than a voxel-wise ratio, which noise in a dark pre-contrast voxel would blow up."""
    before, after = _median(pre, mask), _median(post, mask)
    if before is None or after is None or before <= 0:
        return None
    return 100.0 * (after - before) / before


def measure(bodies: np.ndarray, patterns: list[Pattern], focus_masks: list[np.ndarray],
            categories: list[FocusCategory], *, pre: np.ndarray | None = None,
            post: np.ndarray | None = None, fat_suppressed: np.ndarray | None = None,
            rules: CompanionRules = DEFAULT_RULES) -> CompanionMeasures:
    """Per vertebra (bodies numbered 1..n) and per focus: enhancement (pre and post on the
    Dixon grid) and the fat-suppressed ratio, the references and the flags."""
    normal, reference = normal_marrow(bodies, patterns, focus_masks)
    regions = [bodies == n for n in range(1, len(patterns) + 1)] + list(focus_masks)
    result = CompanionMeasures(vertebrae=[], foci=[], fat_suppression=[None] * len(focus_masks),
                               normal_reference=reference)
    enhancement: list[float | None] = [None] * len(regions)
    to_normal: list[float | None] = [None] * len(regions)
    fat_ratio: list[float | None] = [None] * len(regions)
    if pre is not None and post is not None:
        base = result.normal_enhancement_percent = _enhancement(pre, post, normal)
        enhancement = [_enhancement(pre, post, mask) for mask in regions]
        to_normal = [v / base if v is not None and base else None for v in enhancement]
        if any(enhancing(v, base, rules) for v in enhancement[len(patterns):]):
            result.flags.append(Flag.ENHANCING_FOCUS)
    if fat_suppressed is not None:
        base_signal = result.normal_fat_suppressed_signal = _median(fat_suppressed, normal)
        signals = [_median(fat_suppressed, mask) for mask in regions]
        fat_ratio = [v / base_signal if v is not None and base_signal else None
                     for v in signals]
        if any(high_signal(r, rules) for r in fat_ratio):
            result.flags.append(Flag.HIGH_SIGNAL_AFTER_FAT_SATURATION)
        result.fat_suppression = [
            _suppression(r, category, rules)
            for r, category in zip(fat_ratio[len(patterns):], categories, strict=True)]
    measured = [RegionMeasures(e, q, f) for e, q, f in zip(enhancement, to_normal, fat_ratio,
                                                          strict=True)]
    result.vertebrae, result.foci = measured[:len(patterns)], measured[len(patterns):]
    return result


def _suppression(ratio: float | None, category: FocusCategory,
                 rules: CompanionRules) -> FatSuppression | None:
    """A fat-containing focus: completely suppressed (benign pattern) or not."""
    if ratio is None or category != FocusCategory.FAT_CONTAINING:
        return None
    return (FatSuppression.COMPLETE if ratio <= rules.complete_suppression_ratio
            else FatSuppression.INCOMPLETE)


def enhancing(value: float | None, normal: float | None,
              rules: CompanionRules = DEFAULT_RULES) -> bool:
    """Well beyond the patient's normal marrow: by points, and by ratio when normal marrow
    enhances at all."""
    if value is None or normal is None:
        return False
    if value < normal + rules.enhancing_points_above_normal:
        return False
    return normal <= 0 or value >= rules.enhancing_ratio_to_normal * normal


def high_signal(ratio: float | None, rules: CompanionRules = DEFAULT_RULES) -> bool:
    """Whether a fat-suppressed ratio counts as high signal."""
    return ratio is not None and ratio >= rules.high_signal_ratio
