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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from marrownode.quant.geometry import (
    ANTERIOR_POSTERIOR,
    LEFT_RIGHT,
    SUPERIOR_INFERIOR,
    VolumeGeometry,
)
from marrownode.quant.masks import in_plane_box, label_boxes, labelled, voxel_indices

#: A gap between localised marrow (the disc, both endplates and the rim the localiser
#: leaves; see GAP_PERCENTILE) shorter than this share of the column's median gap is a fused
#: segment's remnant, not a mobile disc.
FUSED_GAP_SHARE = 0.7
#: The gap between two bodies is read at this percentile of the lower body's distances from
#: the upper one: about its endplate's nearest half (clean lumbar phantom: mobile discs
#: 14.8-17.2 mm, S1-S2 remnant 7.4 mm; at SNR 12, mobile 12.4-18.0, remnant 7.4-7.5).
GAP_PERCENTILE = 5.0
#: At most this many mobile bodies above the sacrum can be named from it in one field of view.
MAX_LUMBAR = 5
LUMBAR_NAMES = ("L1", "L2", "L3", "L4", "L5")
#: C2 to L5: the mobile bodies counted down from the dens.
MOBILE_NAMES = (*(f"C{n}" for n in range(2, 8)), *(f"T{n}" for n in range(1, 13)),
                *LUMBAR_NAMES)
#: A gap between bodies over this share of the typical one has lost a body (or two).
MISSING_BODY_GAP_SHARE = 2.0
#: The dens: marrow rising at least this far (mm) above C2's body, narrower than this share
#: of the body's depth and width; measured in slabs of DENS_BIN_MM along the column.
DENS_MIN_HEIGHT_MM, DENS_MAX_WIDTH_SHARE, DENS_BIN_MM = 8.0, 0.7, 2.0


@dataclass(frozen=True)
class LevelNames:
    """Per body (V1 first) its anatomical name or None, and whether (and why) the count is not
    fixed."""

    names: list[str | None]
    uncertain: bool
    reason: str


def _gap_mm(bodies: np.ndarray, upper: int, boxes: Sequence[tuple[slice, ...] | None],
            spacing: tuple[float, float, float]) -> float:
    """How far body upper + 1 lies from body upper: the distance its closest GAP_PERCENTILE %
    of voxels keep (the endplate facing the disc), on their common bounding box (boxes:
    ndimage.find_objects of the bodies). Not the single closest voxel: at low signal-to-noise
    a few voxels of disc taken into either mask bridge a wedge-shaped L5-S1 disc (4 mm at SNR
    12, where the S1-S2 remnant measured 5.7), and S1 was then called L5."""
    present = [box for box in boxes[upper - 1:upper + 1] if box is not None]
    if not present:
        raise ValueError(f"bodies {upper} and {upper + 1} are empty")
    box = tuple(slice(min(b[axis].start for b in present), max(b[axis].stop for b in present))
                for axis in range(bodies.ndim))
    distance = ndimage.distance_transform_edt(bodies[box] != upper, sampling=spacing)
    return float(np.percentile(distance[bodies[box] == upper + 1], GAP_PERCENTILE))


def name_levels(bodies: np.ndarray, geometry: VolumeGeometry,
                marrow_like: np.ndarray | None = None) -> LevelNames:
    """Names for bodies numbered cranio-caudally (1 = V1), anchored on C2 (its dens) where
    the stack shows it, else on the sacrum; marrow_like: fatty marrow, where the dens is
    looked for above the top body."""
    count = int(bodies.max())
    unnamed: list[str | None] = [None] * count
    if count < 2:
        return LevelNames(unnamed, True, "too few bodies to find the sacrum")
    boxes = label_boxes(bodies)
    gaps = [_gap_mm(bodies, number, boxes, geometry.spacing_mm)
            for number in range(1, count)]
    typical = float(np.median(gaps))
    fused = [gap < FUSED_GAP_SHARE * typical for gap in gaps]
    s1 = count - 1 if fused[-1] else None
    while s1 is not None and s1 > 0 and fused[s1 - 1]:
        s1 -= 1
    if marrow_like is not None and has_dens(bodies == 1, bodies, marrow_like, geometry):
        return _from_c2(count, gaps, typical, s1)
    if s1 is None:
        return LevelNames(unnamed, True, "no sacrum in view (no fused segments at the caudal "
                                         "end): the levels cannot be counted from it")
    if s1 == 0:
        return LevelNames(unnamed, True, "no mobile disc above the fused segments: which "
                                         "segment is S1 is not known")
    mobile = s1  # bodies above the sacrum
    if any(gap > MISSING_BODY_GAP_SHARE * typical for gap in gaps[:s1]):
        return LevelNames(unnamed, True, "a body is missing from the column above the sacrum "
                                         "(a gap of more than one level): the levels cannot "
                                         "be counted from it")
    if mobile > MAX_LUMBAR:
        return LevelNames(unnamed, True, f"{mobile} mobile bodies above the sacrum: T12 and "
                                         "five lumbar, or a transitional sixth lumbar "
                                         "vertebra; count from C2 or the ribs to tell")
    names: list[str | None] = [*LUMBAR_NAMES[MAX_LUMBAR - mobile:],
                               *(f"S{n}" for n in range(1, count - s1 + 1))]
    return LevelNames(names, False, f"counted from the sacrum (S1: the top fused segment, "
                                    f"below a {gaps[s1 - 1]:.0f} mm disc)")


def _from_c2(count: int, gaps: list[float], typical: float, s1: int | None) -> LevelNames:
    """Names counted down from C2. Only a column without a missing body can be counted (no
    gap over MISSING_BODY_GAP_SHARE of the typical one), and where the sacrum is in view too,
    both anchors must agree: 23 mobile bodies from C2 to L5 (else a transitional segment, or
    13 thoracic or 6 lumbar vertebrae, which the image alone does not tell)."""
    unnamed: list[str | None] = [None] * count
    mobile = count if s1 is None else s1
    if any(gap > MISSING_BODY_GAP_SHARE * typical for gap in gaps[:max(mobile - 1, 0)]):
        return LevelNames(unnamed, True, "C2 in view, but a body is missing from the column "
                                         "below it: the levels cannot be counted")
    if mobile > len(MOBILE_NAMES):
        return LevelNames(unnamed, True, f"{mobile} mobile bodies from C2 down: more than the "
                                         "23 of C2 to L5; the levels are not fixed")
    if s1 is not None and mobile != len(MOBILE_NAMES):
        return LevelNames(unnamed, True, f"{mobile} mobile bodies from C2 to the sacrum, not "
                                         "23: a transitional segment, or 13 thoracic or 6 "
                                         "lumbar vertebrae; the levels are not fixed")
    sacral = [] if s1 is None else [f"S{n}" for n in range(1, count - s1 + 1)]
    names: list[str | None] = [*MOBILE_NAMES[:mobile], *sacral]
    anchors = "C2 (the dens) and the sacrum agree" if s1 is not None else "C2 (the dens)"
    return LevelNames(names, False, f"counted from {anchors}")


def has_dens(top: np.ndarray, bodies: np.ndarray, marrow_like: np.ndarray,
             geometry: VolumeGeometry) -> bool:
    """Whether the top body is C2: marrow rises from it as a peg (the dens), at least
    DENS_MIN_HEIGHT_MM above the body's full width and under DENS_MAX_WIDTH_SHARE of its
    depth and width; inside the stack (a body cut by the field's edge proves nothing)."""
    # the top body and the fatty marrow outside any body that is connected to it
    connected, _ = labelled((marrow_like & (bodies == 0)) | top)
    index = voxel_indices(np.isin(connected, np.unique(connected[top])))
    if index.size == 0 or (index.min(axis=0) == 0).any() or (
            index.max(axis=0) == np.array(top.shape) - 1).any():
        return False
    points = geometry.to_patient(index)
    height = points[:, SUPERIOR_INFERIOR]
    bins = np.floor((height - height.min()) / DENS_BIN_MM).astype(int)
    widths = np.zeros((int(bins.max()) + 1, 2))
    for b in range(widths.shape[0]):
        here = points[bins == b]
        if here.size:
            widths[b] = np.ptp(here[:, [ANTERIOR_POSTERIOR, LEFT_RIGHT]], axis=0)
    full = np.median(widths[: max(1, widths.shape[0] // 2)], axis=0) + 1e-6
    wide = ~np.all(widths / full < DENS_MAX_WIDTH_SHARE, axis=1)[::-1]  # from the top down
    peg_bins = int(np.argmax(wide)) if wide.any() else len(wide)  # narrow slabs on top
    return peg_bins * DENS_BIN_MM >= DENS_MIN_HEIGHT_MM


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


def without_shared_discs(bodies: np.ndarray, signal_loss: np.ndarray,
                         water_rich_below: float) -> np.ndarray:
    """A disc belongs to no body. On a lateral sagittal slice the biconcave endplates come
    close and the frame of cortex closes over the disc between them, so the disc is taken in
    as bone and split between the bodies above and below it. A water-rich part of a slice
    that holds voxels of two bodies is that disc (a tumour respects the disc: it never runs
    from one body through the disc into the next), and is taken out of both."""
    cleaned = bodies.copy()
    box = in_plane_box(bodies > 0, 0)  # the parts lie in the bodies' box: work there only
    if box is None:
        return cleaned
    labelled = bodies[box]
    water = (labelled > 0) & (np.nan_to_num(signal_loss[box], nan=0.0) < water_rich_below)
    for k in np.flatnonzero(water.any(axis=(1, 2))):
        parts, count = ndimage.label(water[k])
        index = np.arange(1, count + 1)
        lowest = ndimage.minimum(labelled[k], parts, index)
        highest = ndimage.maximum(labelled[k], parts, index)
        shared = np.zeros(count + 1, dtype=bool)
        shared[1:] = np.asarray(lowest) != np.asarray(highest)
        cleaned[box][k][shared[parts]] = 0
    return cleaned


#: A body holds at least this much marrow (mm3): a 4 mm sagittal section through a lumbar
#: body holds about 5,000, a cervical one 1,000. Less is a sliver that splitting a body two
#: levels tall left behind at the disc between them, not a vertebra.
MIN_BODY_MM3 = 500.0


def without_slivers(bodies: np.ndarray, posterior: np.ndarray, voxel_mm3: float,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Bodies (and their posterior elements) under MIN_BODY_MM3 taken out, the rest numbered
    again cranio-caudally in the same order."""
    boxes = label_boxes(bodies)  # each body counted in its own box
    counts = np.array([0] + [int(np.count_nonzero(bodies[box] == n)) if box is not None else 0
                             for n, box in enumerate(boxes, start=1)])
    kept = counts * voxel_mm3 >= MIN_BODY_MM3
    kept[0] = False
    if kept[1:].all():
        return bodies, posterior
    number = np.zeros(counts.size, dtype=bodies.dtype)
    number[kept] = np.arange(1, int(kept.sum()) + 1, dtype=bodies.dtype)
    return number[bodies], number[posterior]
