"""One body per level, and anatomical names for the bodies only when the anatomy fixes them.

A lesion lies inside its vertebra: it never splits it in-plane (merge_same_level) or across
slices (bridge_slices).

The anchor is the sacrum: its segments are fused, so between them lie only thin remnants of
discs, where mobile vertebrae have full discs between them. The caudal run of bodies with thin
gaps between them is the sacrum; its top segment is S1, the body above the last mobile disc is
L5, and the names go up from there (and down: S2, S3). Never a guess: without a sacrum in view,
or with more mobile bodies above it than a lumbar field of view shows of one spine (six: T12
and five lumbar, or a transitional sixth lumbar vertebra, which only counting from C2 or the
ribs tells apart), the bodies keep their V-numbers and the reason is said.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from marrownode.quant.geometry import SUPERIOR_INFERIOR, VolumeGeometry

#: A gap between localised marrow (surface to surface: the disc, both endplates and the rim
#: the localiser leaves) shorter than this share of the column's median gap is a fused
#: segment's remnant, not a mobile disc. Measured on the lumbar phantom: mobile 14.7-17.2 mm,
#: the S1-S2 remnant 8.6 mm.
FUSED_GAP_SHARE = 0.7
#: At most this many mobile bodies above the sacrum can be named from it in one field of view.
MAX_LUMBAR = 5
LUMBAR_NAMES = ("L1", "L2", "L3", "L4", "L5")


@dataclass(frozen=True)
class LevelNames:
    """Per body (V1 first) its anatomical name or None, and whether (and why) the count is not
    fixed."""

    names: list[str | None]
    uncertain: bool
    reason: str


def _gap_mm(upper: np.ndarray, lower: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Surface-to-surface distance between two bodies, on their common bounding box."""
    both = np.argwhere(upper | lower)
    low, high = both.min(axis=0), both.max(axis=0) + 1
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    distance = ndimage.distance_transform_edt(~upper[box], sampling=spacing)
    return float(distance[lower[box]].min())


def name_levels(bodies: np.ndarray, geometry: VolumeGeometry) -> LevelNames:
    """Names for bodies numbered cranio-caudally (1 = V1), anchored on the sacrum."""
    count = int(bodies.max())
    unnamed: list[str | None] = [None] * count
    if count < 2:
        return LevelNames(unnamed, True, "too few bodies to find the sacrum")
    masks = [bodies == number for number in range(1, count + 1)]
    gaps = [_gap_mm(masks[i], masks[i + 1], geometry.spacing_mm) for i in range(count - 1)]
    typical = float(np.median(gaps))
    fused = [gap < FUSED_GAP_SHARE * typical for gap in gaps]
    if not fused[-1]:
        return LevelNames(unnamed, True, "no sacrum in view (no fused segments at the caudal "
                                         "end): the levels cannot be counted from it")
    s1 = count - 1
    while s1 > 0 and fused[s1 - 1]:
        s1 -= 1
    if s1 == 0:
        return LevelNames(unnamed, True, "no mobile disc above the fused segments: which "
                                         "segment is S1 is not known")
    mobile = s1  # bodies above the sacrum
    if mobile > MAX_LUMBAR:
        return LevelNames(unnamed, True, f"{mobile} mobile bodies above the sacrum: T12 and "
                                         "five lumbar, or a transitional sixth lumbar "
                                         "vertebra; count from C2 or the ribs to tell")
    names: list[str | None] = [*LUMBAR_NAMES[MAX_LUMBAR - mobile:],
                               *(f"S{n}" for n in range(1, count - s1 + 1))]
    return LevelNames(names, False, f"counted from the sacrum (S1: the top fused segment, "
                                    f"below a {gaps[s1 - 1]:.0f} mm disc)")


def bridge_slices(bodies: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """A lesion never splits a body across slices either: a slice between two slices of the
    same body that holds none of it (the lesion filled it, so nothing there looked like
    marrow) gets the section both neighbours share, where the tissue allows."""
    bridged = bodies.copy()
    for number in range(1, int(bodies.max()) + 1):
        mask = bodies == number
        present = np.flatnonzero(mask.any(axis=(1, 2)))
        for k in range(int(present[0]) + 1, int(present[-1])) if present.size else ():
            if mask[k].any() or not (mask[k - 1].any() and mask[k + 1].any()):
                continue
            shared = (convex_hull_image(mask[k - 1])  # type: ignore[no-untyped-call]
                      & convex_hull_image(mask[k + 1]))  # type: ignore[no-untyped-call]
            bridged[k][ndimage.binary_erosion(shared) & allowed[k] & (bridged[k] == 0)] = number
    return bridged


def merge_same_level(bodies: np.ndarray, geometry: VolumeGeometry,
                      overlap: float) -> np.ndarray:
    """One body per level: bodies (numbered cranio-caudally) whose cranio-caudal extents
    coincide for at least `overlap` of the shorter one lie side by side at one level, parts of
    one vertebra that a water-rich lesion (or a thin slab) had cut apart; they become one body,
    and all are numbered again."""
    axis, _ = geometry.voxel_axis(SUPERIOR_INFERIOR)
    other = tuple(a for a in range(3) if a != axis)
    count = int(bodies.max())
    extents = []
    for number in range(1, count + 1):
        present = np.flatnonzero((bodies == number).any(axis=other))
        extents.append((int(present[0]), int(present[-1])) if present.size else (0, -1))
    group = list(range(count))  # body index -> the first body of its level
    for i in range(1, count):
        first = group[i - 1]
        low, high = max(extents[first][0], extents[i][0]), min(extents[first][1], extents[i][1])
        shorter = min(extents[first][1] - extents[first][0], extents[i][1] - extents[i][0]) + 1
        if high - low + 1 >= overlap * shorter:
            group[i] = first
    levels = sorted(set(group))
    merged = np.zeros_like(bodies)
    for index, first in enumerate(group):
        merged[bodies == index + 1] = levels.index(first) + 1
    return merged
