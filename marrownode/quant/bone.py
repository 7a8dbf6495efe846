"""What is bone, before any body is named: the localiser's rules 1 and 2 (quant/spine.py), and
each body's interior up to its cortex.

- Rule 1, mixed water-fat: marrow loses clearly more signal than fat, muscle, discs and organs.
- Rule 2, inside bone: tissue enclosed in its slice by signal void (cortex, endplates) is
  marrow whatever its loss: the only way to find marrow that lost its fat.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from marrownode.quant.body import fill_holes_per_slice
from marrownode.quant.localisation import SpineParameters
from marrownode.quant.maps import finite_or_zero
from marrownode.quant.masks import (
    closed_in_plane,
    in_plane_box,
    label_boxes,
    median_reaches,
    square_dilated,
)

#: A part of a slice's bone interior is a body's when the body already holds this share of it.
FRAME_HELD_SHARE = 0.25
#: The gradient's smoothing (pixels) and how far its filters reach (scipy's 4 sigma).
GRADIENT_SIGMA = 1.0
GRADIENT_REACH = int(4.0 * GRADIENT_SIGMA + 0.5)
#: Balls of at most this many voxels are cheaper as structuring elements than as distances.
_SMALL_BALL = 27


def opening(mask: np.ndarray, radius_mm: float,
             spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Morphological opening with a Euclidean ball of radius_mm. A small ball is a small
    structuring element; a large one is done by two distance transforms instead (linear in the
    volume whatever the radius). Outside the volume counts as background either way."""
    ball = _ball(radius_mm, spacing_mm)
    boxes = ndimage.find_objects(mask.astype(np.int8))
    result: np.ndarray = np.zeros(mask.shape, dtype=bool)
    if not boxes or boxes[0] is None:
        return result
    box = boxes[0]
    if ball.sum() <= _SMALL_BALL:
        # In the mask's box: outside it there is only background, as the border counts, and
        # an opening stays inside the mask.
        result[box] = ndimage.binary_opening(mask[box], structure=ball)
        return result
    # Within the mask's box and one background voxel around it: every distance that matters
    # (from a mask voxel to the background, from any voxel to an eroded one) is the same as
    # on the whole grid, for a fraction of the work on a field larger than the bone.
    inside = mask[box]
    padded = np.pad(inside, 1)
    eroded = ndimage.distance_transform_edt(padded, sampling=spacing_mm) > radius_mm
    opened = ndimage.distance_transform_edt(~eroded, sampling=spacing_mm) <= radius_mm
    result[box] = opened[1:-1, 1:-1, 1:-1] & inside
    return result


def _ball(radius_mm: float, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    half = [int(radius_mm // s) for s in spacing_mm]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    distance = sum(((g * s) / radius_mm) ** 2 for g, s in zip(grids, spacing_mm, strict=True))
    ball: np.ndarray = np.asarray(distance <= 1.0)
    return ball


def relative_gradient(in_phase: np.ndarray, where: np.ndarray) -> np.ndarray:
    """In-plane gradient magnitude over local signal on where (inf elsewhere): small inside
    homogeneous tissue, large at fat-water borders (where the chemical-shift rims are). The
    filters run in where's box widened by their reach (4 sigma), where they give the whole
    grid's values."""
    gradient: np.ndarray = np.full(in_phase.shape, np.inf, dtype=np.float32)
    box = in_plane_box(where, GRADIENT_REACH)
    if box is None:
        return gradient
    volume = in_phase[box]
    sigma = (0.0, GRADIENT_SIGMA, GRADIENT_SIGMA)
    smooth = ndimage.gaussian_filter(volume, sigma=sigma)
    rows = ndimage.gaussian_filter(volume, sigma=sigma, order=(0, 1, 0))
    columns = ndimage.gaussian_filter(volume, sigma=sigma, order=(0, 0, 1))
    gradient[box] = np.hypot(rows, columns) / np.maximum(smooth, 1e-6)
    return gradient


#: The cortex and endplates are about this thick (mm): on pixels of at most 1 / CORTEX_PIXELS
#: of it their void is unbroken, and only void pixels that continue a line count (_on_lines).
CORTEX_MM = 1.0
CORTEX_PIXELS = 1.5


def enclosed_by_void(in_phase: np.ndarray, tissue: np.ndarray, body: np.ndarray,
                     level: float, darker_than: float, gap_mm: float,
                     spacing_mm: tuple[float, float, float],
                     lines: np.ndarray | None = None) -> np.ndarray:
    """Tissue framed in its slice by voxels darker than darker_than x level: the inside of
    bone, whatever its signal loss. Found on the acquisition grid, where a 1 mm cortex is
    still a line (averaged into blocks it opens); the frame is first closed over gaps up to
    gap_mm (partial volume along a thin cortex; the basivertebral vein's notch in the
    posterior wall). lines: thin dark lines (dark_lines), which frame too: a cortex
    partial-volumed into its pixels, darker than its surroundings but not void."""
    void = body & (finite_or_zero(in_phase) < darker_than * level)
    if min(spacing_mm[1:]) * CORTEX_PIXELS <= CORTEX_MM:
        void = _on_lines(void)  # the cortex is a band of pixels: a void pixel continues a line
    if lines is not None:
        void |= body & lines
    radius = [max(1, round(gap_mm / 2 / s)) for s in spacing_mm[1:]]
    rows, columns = np.ogrid[-radius[0]:radius[0] + 1, -radius[1]:radius[1] + 1]
    disk = (rows / radius[0]) ** 2 + (columns / radius[1]) ** 2 <= 1.0
    frame = closed_in_plane(void, disk)
    enclosed: np.ndarray = fill_holes_per_slice(frame) & ~frame & tissue
    return enclosed


def _on_lines(void: np.ndarray) -> np.ndarray:
    """Void pixels with void on both sides along a row, a column or a diagonal: every pixel of
    a cortex line or band (one pixel wide included) but its two ends. Where pixels are much
    finer than the cortex, a void pixel without such neighbours is noise: in a disc's annulus,
    whose signal lies not far above the void's, the noise puts a sixth of the pixels under it
    at SNR 20, and a frame's closing (3 mm: 3 pixels of 0.55 mm) joins them into rings that
    enclose the disc."""
    widened = np.pad(void, ((0, 0), (LINE_GAP, LINE_GAP), (LINE_GAP, LINE_GAP)))
    rows, columns = void.shape[1:]
    through = np.zeros(void.shape, dtype=bool)
    for down, across in _DIRECTIONS:
        through |= (_moved(widened, down, across, rows, columns)
                    & _moved(widened, -down, -across, rows, columns))
    return void & through


#: A thin dark line (cortex partial-volumed into its pixels): along one of four directions its
#: mean over LINE_LENGTH pixels lies below the means LINE_GAP pixels to both sides of it.
LINE_LENGTH, LINE_GAP = 5, 2
_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))


def dark_lines(volume: np.ndarray, level: float, depth: float, darker_than: float,
               ) -> np.ndarray:
    """Pixels on thin dark lines in their slice: a line mean over LINE_LENGTH pixels (in one
    of four directions) darker than depth x level below the line means LINE_GAP pixels to
    either side, and itself darker than darker_than x level. A 1 mm cortex or endplate on
    pixels of about its size is averaged with the marrow it bounds (half of it on each of two
    pixels, never void); the mean along it is what the eye reads, with a fifth of the noise
    variance, and a wide dark region (an annulus, CSF) is no line."""
    half = LINE_LENGTH // 2
    pad = half + LINE_GAP
    rows, columns = volume.shape[1:]
    padded = np.pad(np.asarray(volume, dtype=np.float32), ((0, 0), (pad, pad), (pad, pad)),
                    mode="edge")
    found = np.zeros(volume.shape, dtype=bool)
    deeper, ceiling = depth * level, darker_than * level
    for down, across in _DIRECTIONS:
        mean = _line_means(padded, down, across, rows, columns)
        normal = (across * LINE_GAP, -down * LINE_GAP)  # perpendicular to the line
        centre = _moved(mean, 0, 0, rows, columns)
        sides = np.minimum(_moved(mean, *normal, rows, columns),
                           _moved(mean, -normal[0], -normal[1], rows, columns))
        sides -= centre
        found |= (sides > deeper) & (centre < ceiling)
    return found


def _line_means(padded: np.ndarray, down: int, across: int, rows: int,
                columns: int) -> np.ndarray:
    """Means over LINE_LENGTH pixels along (down, across), on the grid widened by LINE_GAP
    on every side (padded: by LINE_LENGTH // 2 more)."""
    half = LINE_LENGTH // 2
    if down == 0 or across == 0:  # along rows or columns: one filter pass
        mean: np.ndarray = ndimage.uniform_filter1d(padded, LINE_LENGTH, axis=2 if down == 0
                                                    else 1)
        return mean[:, half:half + rows + 2 * LINE_GAP, half:half + columns + 2 * LINE_GAP]
    widened = (rows + 2 * LINE_GAP, columns + 2 * LINE_GAP)
    total = np.zeros((padded.shape[0], *widened), dtype=np.float32)
    for step in range(-half, half + 1):
        r, c = half + step * down, half + step * across
        total += padded[:, r:r + widened[0], c:c + widened[1]]
    total /= LINE_LENGTH
    return total


def _moved(widened: np.ndarray, dr: int, dc: int, rows: int, columns: int) -> np.ndarray:
    """The grid's view of a volume widened by LINE_GAP on every side, moved by (dr, dc)."""
    return widened[:, LINE_GAP + dr:LINE_GAP + dr + rows, LINE_GAP + dc:LINE_GAP + dc + columns]


def bone_candidates(in_phase: np.ndarray, signal_loss: np.ndarray, tissue: np.ndarray,
                    body: np.ndarray, spacing_mm: tuple[float, float, float],
                    parameters: SpineParameters, level: float,
                    enclosed: np.ndarray | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Marrow-like tissue, holes (focal lesions) filled, and the void mask.

    Rule 1, mixed water-fat: regional (median) loss high, the voxel's own loss not low, and the
    in-phase signal homogeneous (rims at fat-water borders and fatty muscle are not).
    Rule 2, inside bone: tissue enclosed in its slice by void (cortex, endplates, CSF).
    Neither may cross a barrier of void or water-rich voxels (canal, discs, cortex), which is
    what keeps a body apart from its posterior elements and from the muscles beside it."""
    volume = finite_or_zero(np.asarray(in_phase, dtype=np.float32))
    loss = np.nan_to_num(signal_loss, nan=0.0)
    void = body & (volume < parameters.void_relative_signal * level)
    if enclosed is None:
        enclosed = fill_holes_per_slice(void) & ~void & tissue
    homogeneous = relative_gradient(volume, tissue) < parameters.max_relative_gradient
    regional_fat = median_reaches(loss, parameters.mixed_tissue_min_loss_percent, 5)
    mixed = (tissue & homogeneous & regional_fat
             & (loss >= parameters.water_rich_max_loss_percent))
    water_rich = tissue & (loss < parameters.water_rich_max_loss_percent) & (
        volume < parameters.fat_relative_signal * level)
    barrier = void | (water_rich & ~enclosed)
    barrier = square_dilated(barrier, 1)  # in-plane 3 x 3
    candidates = (mixed | enclosed) & ~barrier | (enclosed & ~void)
    opened = opening(candidates, parameters.rim_radius_mm, spacing_mm)
    filled: np.ndarray = fill_holes_per_slice(opened) & ~void
    return filled, void


def fill_frames(bodies: np.ndarray, enclosed: np.ndarray, along: int | None = None,
                step_mm: float = 1.0) -> np.ndarray:
    """Each body up to its cortex: in every slice, a part of the bone interior (tissue the
    cortex and endplates enclose) that touches one body only, and is at least
    FRAME_HELD_SHARE that body already, is all of it. A lesion reaching the cortex, which the
    blocks and the convex hull leave outside, is then inside its body; a disc reached through
    a broken endplate touches two bodies and is left out. A part that touches several bodies
    is divided by their outlines (_by_outline), and so is one that touches one body holding
    less of it: on a midline slice a central lesion and the vein's notch can leave the body
    a sliver of the part its cortex frames, which its outline on the slices beside it holds.
    (enclosed holds no posterior element: a pedicle stays its level's, apart from the body.)

    along: the in-slice voxel axis (1 or 2) that runs along the column, step_mm its spacing.
    A part is taken only within the body's own extent along the column (plus a quarter of it,
    at least FRAME_MARGIN_MM): on a lateral slice of a small cervical body, where its
    neighbour is not cut, the frame closed over a 4-5 mm disc runs on into the disc and the
    next body, which are no part of it."""
    filled = bodies.copy()
    in_plane = along - 1 if along is not None and along in (1, 2) else None  # axial: none
    extents = _extents(bodies, along, step_mm) if along is not None and in_plane is not None \
        else {}
    for k in np.flatnonzero(bodies.any(axis=(1, 2))):
        parts, count = ndimage.label(enclosed[k])
        if count == 0:
            continue
        sizes = np.bincount(parts.ravel(), minlength=count + 1)
        touching = np.zeros(count + 1, dtype=np.int32)
        held = {}
        for number in range(1, int(bodies[k].max()) + 1):
            held[number] = np.bincount(parts[bodies[k] == number], minlength=count + 1)
            touching += held[number] > 0
        spans = ndimage.find_objects(parts) if in_plane is not None else []
        outlined = touching > 1
        for number, share in held.items():
            alone = (touching == 1) & (share > 0)
            chosen = alone & (share >= FRAME_HELD_SHARE * sizes)
            outlined |= alone & ~chosen
            for part in np.flatnonzero(chosen[1:]) + 1:
                if in_plane is not None and not _within(spans[part - 1][in_plane],
                                                        extents[number]):
                    continue
                filled[k][(parts == part) & (filled[k] == 0)] = number
        for part in np.flatnonzero(outlined[1:]) + 1:
            _by_outline(filled, bodies, int(k), parts == part,
                        [n for n, share in held.items() if share[part]])
    return filled


def _by_outline(filled: np.ndarray, bodies: np.ndarray, k: int, part: np.ndarray,
                numbers: list[int]) -> None:
    """A part shared by several bodies (on a midline slice the frame closed over the
    basivertebral vein's notch and a disc's annulus can hold a body, its discs and its
    neighbours at once): each body takes the part's voxels inside its own outline, where
    no other body's outline reaches (_outline). A lesion inside a body is inside its outline;
    a disc lies between two outlines and stays out."""
    box = ndimage.find_objects(part.astype(np.int8))[0]
    outlines = {}
    for number in numbers:
        outline = _outline(bodies, number, k, box)
        if outline is not None:
            outlines[number] = outline
    if not outlines:
        return
    reach = np.sum(list(outlines.values()), axis=0)
    here = filled[k][box]
    inside = part[box]
    for number, outline in outlines.items():
        here[outline & (reach == 1) & inside & (here == 0)] = number


def _outline(bodies: np.ndarray, number: int, k: int,
             box: tuple[slice, ...]) -> np.ndarray | None:
    """A body's outline on slice k within box: what lies inside the convex hulls of its
    sections on both slices beside it (a lesion this slice's section lost lies inside them;
    on a lateral slice the disc lies outside the next slice's smaller hull); None where a
    slice beside it holds no section."""
    def hull(j: int) -> np.ndarray | None:
        if not 0 <= j < bodies.shape[0]:
            return None
        section = bodies[j][box] == number
        return convex_hull_image(section) if section.sum() >= 3 else None  # type: ignore[no-untyped-call]

    before, after = hull(k - 1), hull(k + 1)
    if before is None or after is None:
        return None
    # two voxels in: a hull bridges the endplates' concavity, where the disc bulges in
    eroded: np.ndarray = ndimage.binary_erosion(before & after, iterations=2)
    return eroded if eroded.any() else None


#: The least margin (mm) a framed part may run beyond its body's extent along the column.
FRAME_MARGIN_MM = 3.0


def _within(span: slice, extent: tuple[float, float]) -> bool:
    """Whether a part's index span along the column lies inside a body's allowed extent."""
    return bool(extent[0] <= span.start and span.stop - 1 <= extent[1])


def _extents(bodies: np.ndarray, along: int,
             step_mm: float) -> dict[int, tuple[float, float]]:
    """Per body, the voxel range along the column a framed part may span."""
    extents = {}
    for number, box in enumerate(label_boxes(bodies), start=1):
        if box is None:
            continue
        low, high = box[along].start, box[along].stop - 1
        margin = max(FRAME_MARGIN_MM, 0.25 * (high - low + 1) * step_mm) / step_mm
        extents[number] = (low - margin, high + margin)
    return extents
