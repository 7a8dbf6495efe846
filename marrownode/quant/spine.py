"""Vertebral marrow from the images themselves: where are the vertebral bodies?

What the physics gives (docs/domain.md §1-2), used in this order:
1. Marrow is mixed water-fat tissue: clearly more signal loss than fat (mostly fat) or muscle,
   discs, CSF and organs (mostly water). That finds normal marrow.
2. Marrow sits inside bone: framed in every plane by signal-void cortex and endplates. Regions
   of tissue enclosed by void find marrow that lost its fat (diffuse replacement), which rule
   1 cannot see. (Rules 1 and 2 are in quant/bone.py.)
3. Vertebral bodies are thick (20-50 mm in every direction); posterior elements and the
   chemical-shift rims at fat-water borders are thin. An opening with a ~5 mm ball keeps the
   bodies' cores and drops the rest.
4. The bodies form one column: near the left-right midline, in the posterior half of the
   body, stacked cranio-caudally, separated by discs. Fewer than two bodies in such a column
   (a knee, a liver-only field of view) is not a spine: the localiser says so and nothing is
   reported as marrow.
Posterior elements (marrow too) are what remains of the marrow behind each body, reported
apart. Numbering is cranio-caudal (V1 first); anatomical names need an anchor the localiser
does not have (yet), so none are given.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from marrownode.quant.blocks import block_fraction, block_mean
from marrownode.quant.body import bright_end
from marrownode.quant.bone import bone_candidates, dark_lines, enclosed_by_void, fill_frames
from marrownode.quant.column import Part, find_column, find_cores, parts
from marrownode.quant.geometry import (
    ANTERIOR_POSTERIOR,
    LEFT_RIGHT,
    SUPERIOR_INFERIOR,
    VolumeGeometry,
)
from marrownode.quant.levels import (
    bridge_slices,
    merge_same_level,
    name_levels,
    without_shared_discs,
    without_slivers,
)
from marrownode.quant.localisation import Localisation, SpineParameters, not_localised
from marrownode.quant.maps import finite_or_zero
from marrownode.quant.masks import (
    box_around,
    disk_eroded,
    in_plane_box,
    label_boxes,
    nearest_within,
    within_mm,
)
from marrownode.vocabulary import LocalisationMethod

#: In-plane pixels finer than this (mm) show a 1 mm cortex as a line.
FINE_PIXEL_MM = 1.5


def localise(
    in_phase: np.ndarray,
    signal_loss: np.ndarray,
    tissue: np.ndarray,
    body: np.ndarray,
    geometry: VolumeGeometry,
    parameters: SpineParameters = SpineParameters(),
    signal_level: float | None = None,
) -> Localisation:
    """Vertebral bodies and posterior elements of a volume, or why they were not found.
    signal_level: the body's bright end (BodyMasks.signal_level), computed once per set.

    Vertebral bodies are 20-50 mm across: on fine in-plane grids the search runs on blocks
    of about localisation_pixel_mm, and the labels come back to the full grid (_expand)."""
    if not body.any():
        return not_localised(in_phase.shape, "no body in the field of view")
    level = signal_level if signal_level is not None else bright_end(
        np.where(body, in_phase, np.nan))
    factor = max(1, int(parameters.localisation_pixel_mm / max(min(geometry.spacing_mm[1:]),
                                                               1e-6)))
    # Rule 2 on fine grids (searched on blocks, or pixels under FINE_PIXEL_MM) is read on
    # the acquisition grid, where a 1 mm cortex is still a line (void, or a thin dark line
    # where partial volume and noise lift it), from a frame of cortex only:
    # CSF, a disc's annulus and their noise would frame discs, thin thoracic ones most. On
    # coarser grids the cortex is no line and the void frames bone.
    lines = _cortex_lines(in_phase, body, level, geometry, parameters)
    cortex_frame = (enclosed_by_void(in_phase, tissue, body, level,
                                     parameters.cortex_relative_signal, parameters.cortex_gap_mm,
                                     geometry.spacing_mm, lines)
                    if factor > 1 or min(geometry.spacing_mm[1:]) < FINE_PIXEL_MM else None)
    if factor == 1 or cortex_frame is None:  # (None only when factor is 1)
        found = _localise(in_phase, signal_loss, tissue, body, geometry, parameters, level,
                          cortex_frame)
    else:  # the search on blocks, rule 2 where half a block's pixels are inside
        small = _reduce(in_phase, signal_loss, tissue, body, factor)
        reduced = _localise(*small, _reduced_geometry(geometry, factor), parameters, level,
                            block_fraction(cortex_frame, factor) >= 0.5)
        if not reduced.localised:
            return not_localised(in_phase.shape, reduced.reason)
        found = _expand(reduced, factor, in_phase, signal_loss, tissue, geometry, parameters,
                        level)
    if not found.localised:
        return found
    framed = enclosed_by_void(in_phase, tissue, body, level, parameters.void_relative_signal,
                              parameters.frame_gap_mm, geometry.spacing_mm, lines)
    along, _ = geometry.voxel_axis(SUPERIOR_INFERIOR)
    bodies, posterior = without_slivers(without_shared_discs(
        fill_frames(found.bodies, framed & (found.posterior == 0), along,
                    geometry.spacing_mm[along]),
        signal_loss, parameters.water_rich_max_loss_percent), found.posterior,
        float(np.prod(geometry.spacing_mm)))
    posterior = _without_specks(posterior, geometry, parameters.min_element_volume_mm3)
    count = int(bodies.max())
    if count < parameters.min_vertebrae:
        return not_localised(in_phase.shape, f"fewer than {parameters.min_vertebrae} "
                                             "vertebral bodies of a vertebra's size in a "
                                             "column: no spine localised")
    found = replace(found, bodies=bodies, posterior=posterior, reason=f"{count} vertebral "
                    "bodies in one column", labels=[f"V{n}" for n in range(1, count + 1)])
    fatty_marrow = tissue & (np.nan_to_num(signal_loss) >= parameters.mixed_tissue_min_loss_percent)
    # On the full grid: a fused segment's remnant is 1-3 mm, the dens 8-10 mm wide.
    named = name_levels(found.bodies, geometry, fatty_marrow)
    return replace(found, levels=named.names, levels_reason=named.reason)


def _cortex_lines(in_phase: np.ndarray, body: np.ndarray, level: float,
                  geometry: VolumeGeometry, parameters: SpineParameters) -> np.ndarray | None:
    """A partial-volumed cortex's thin dark lines in the body's box (quant/bone.py
    dark_lines), which frame bone with the void: on sagittal stacks, where the endplates and
    walls are lines and a disc's annulus is a wide band. On axial slices the fasciae between
    the back muscles and the subcutaneous fat are such lines too and would frame fat as bone;
    there (and on coronal slabs, not measured) the void alone frames it."""
    box = in_plane_box(body, 0)
    if geometry.plane() != "sagittal" or box is None:
        return None
    lines = np.zeros(body.shape, dtype=bool)
    lines[box] = dark_lines(finite_or_zero(in_phase[box]), level, parameters.cortex_line_depth,
                            parameters.cortex_line_ceiling)
    return lines


def _without_specks(posterior: np.ndarray, geometry: VolumeGeometry,
                    min_mm3: float) -> np.ndarray:
    """Posterior-element marrow on the full grid without the specks the blocks left where a
    block held a few voxels of it (noise in a disc at low signal-to-noise, called a focus of
    the arch): each connected piece under min_mm3 goes, as on the search grid."""
    box = box_around(posterior > 0, (0, 0, 0))
    if box is None:
        return posterior
    pieces, count = ndimage.label(posterior[box] > 0)
    sizes = np.bincount(pieces.ravel(), minlength=count + 1) * float(
        np.prod(geometry.spacing_mm))
    small = sizes < min_mm3
    small[0] = False
    if not small.any():
        return posterior
    cleaned = posterior.copy()
    cleaned[box][small[pieces]] = 0
    return cleaned


def _reduce(in_phase: np.ndarray, signal_loss: np.ndarray, tissue: np.ndarray,
            body: np.ndarray, factor: int,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    finite = np.isfinite(signal_loss)
    weight = block_fraction(finite, factor)
    loss = block_mean(np.where(finite, signal_loss, 0.0).astype(np.float32), factor)
    loss = np.where(weight > 0, loss / np.maximum(weight, 1e-6), np.nan).astype(np.float32)
    return (block_mean(finite_or_zero(in_phase).astype(np.float32), factor), loss,
            block_fraction(tissue, factor) >= 0.5, block_fraction(body, factor) >= 0.5)


def _reduced_geometry(geometry: VolumeGeometry, factor: int) -> VolumeGeometry:
    spacing = geometry.spacing_mm
    shift = [(factor - 1) / 2 * (spacing[1] * r + spacing[2] * c)
             for r, c in zip(geometry.row_direction, geometry.column_direction, strict=True)]
    origin = (geometry.origin[0] + shift[0], geometry.origin[1] + shift[1],
              geometry.origin[2] + shift[2])
    return replace(geometry, origin=origin,
                   spacing_mm=(spacing[0], spacing[1] * factor, spacing[2] * factor))


def _expand(reduced: Localisation, factor: int, in_phase: np.ndarray, signal_loss: np.ndarray,
            tissue: np.ndarray, geometry: VolumeGeometry, parameters: SpineParameters,
            level: float) -> Localisation:
    """The labels on the full grid. Inside, every tissue voxel that is not void keeps its label
    (focal lesions included); in the outer ring one block wide, only voxels that are mixed
    tissue themselves, so partial volume with muscle, disc or fat never becomes marrow."""
    rows, columns = in_phase.shape[1:]

    def full(labels: np.ndarray) -> np.ndarray:
        grown = np.repeat(np.repeat(labels, factor, axis=1), factor, axis=2)
        return grown[:, :rows, :columns]

    bodies, posterior = full(reduced.bodies), full(reduced.posterior)
    labelled = (bodies > 0) | (posterior > 0)
    width = factor * max(geometry.spacing_mm[1:])
    keep = np.zeros(labelled.shape, dtype=bool)
    box = in_plane_box(labelled, 0)  # nothing is kept where nothing is labelled
    if box is not None:
        allowed = tissue[box] & (finite_or_zero(in_phase[box])
                                 >= parameters.void_relative_signal * level)
        mixed = np.nan_to_num(signal_loss[box]) >= parameters.mixed_tissue_min_loss_percent
        inside = _inside_beyond(labelled, width, geometry.spacing_mm[1:])[box]
        keep[box] = allowed & (inside | mixed)
    return replace(reduced, bodies=np.where(keep, bodies, 0).astype(np.int16),
                   posterior=np.where(keep, posterior, 0).astype(np.int16))


def _inside_beyond(mask: np.ndarray, width_mm: float,
                   pixel_mm: tuple[float, float]) -> np.ndarray:
    """Voxels of mask farther than width_mm in their slice from its outside. Worked in the
    mask's in-plane box with one background voxel around it (where the grid has one): the
    nearest outside voxel is never beyond that ring, so the answer is the whole grid's."""
    inside = np.zeros(mask.shape, dtype=bool)
    box = in_plane_box(mask, 1)
    if box is None:
        return inside
    inside[box] = disk_eroded(mask[box], within_mm(width_mm, pixel_mm), outside=True)
    return inside


def _localise(
    in_phase: np.ndarray,
    signal_loss: np.ndarray,
    tissue: np.ndarray,
    body: np.ndarray,
    geometry: VolumeGeometry,
    parameters: SpineParameters,
    level: float,
    enclosed: np.ndarray | None = None,
) -> Localisation:
    shape = in_phase.shape
    if not body.any():
        return not_localised(shape, "no body in the field of view")
    spacing = geometry.spacing_mm
    bone, void = bone_candidates(in_phase, signal_loss, tissue, body, spacing, parameters,
                                 level, enclosed)
    cores, small = find_cores(bone, geometry, parameters)
    core_labels, _ = ndimage.label(cores)
    body_centre = geometry.to_patient(np.argwhere(body).mean(axis=0))
    column = find_column(parts(core_labels, geometry, small), body_centre, parameters)
    if len(column) < parameters.min_vertebrae:
        found = "one vertebral body" if len(column) == 1 else "no vertebral body"
        return not_localised(shape, f"{found} in a column near the midline: no spine "
                                    "localised in this field of view")
    bodies = _grow_bodies(bone, core_labels, column, spacing, parameters)
    fat = finite_or_zero(in_phase) > parameters.fat_relative_signal * level
    bodies = _complete(bodies, tissue & ~void & ~fat)
    bodies = _split_tall(bodies, signal_loss, geometry, parameters.max_vertebra_height_mm)
    merged = merge_same_level(bodies, geometry, parameters.same_level_overlap)
    if merged.max() < bodies.max():  # a lesion had split a body: give it back its middle
        bodies = _complete(merged, tissue & ~void & ~fat)
    bodies = without_shared_discs(bridge_slices(bodies, tissue & ~void & ~fat), signal_loss,
                                  parameters.water_rich_max_loss_percent)
    posterior = _posterior_elements(bone, bodies, geometry, parameters)
    count = int(bodies.max())
    labels = [f"V{n}" for n in range(1, count + 1)]
    return Localisation(True, LocalisationMethod.IMAGE, f"{count} vertebral bodies in one column",
                        bodies, posterior, labels)


def _grow_bodies(bone: np.ndarray, core_labels: np.ndarray, column: list[Part],
                 spacing: tuple[float, float, float],
                 parameters: SpineParameters) -> np.ndarray:
    """Each body: the marrow within reach of its core (a small body's reach is its small
    core's, or it would grow across its thin discs), every voxel to its nearest core."""
    number_of = np.zeros(int(core_labels.max()) + 1, dtype=np.int16)
    radius = np.zeros(len(column) + 1, dtype=np.float32)
    for number, part in enumerate(column, start=1):
        number_of[part.label] = number
        radius[number] = (parameters.small_core_radius_mm if part.small
                          else parameters.core_radius_mm) + 1.0
    numbered = number_of[core_labels]
    bodies: np.ndarray = np.where(bone, nearest_within(numbered, radius, spacing), 0).astype(
        np.int16)
    return bodies


#: Of a voxel's 3 x 3 in-plane neighbourhood, at least this many must be tissue the body may
#: take (neither void nor fat) for the convex hull to give the voxel to its body.
COMPLETION_MIN_ROOM = 5
_SQUARE = np.ones((3, 3), dtype=np.uint8)


def _complete(bodies: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Give each body back what the water-rich barrier carved out of it: a focal lesion is
    water-rich too, and one near an endplate or the cortex leaves a bite. A vertebral body's
    section is about convex, so each slice of a body is its convex hull, limited to tissue that
    is neither void (cortex, canal) nor bright fat (epidural and paravertebral fat), one
    voxel in from the hull's rim, and among such tissue (COMPLETION_MIN_ROOM): where a
    section curves (the sacrum) its hull reaches over the disc below, whose annulus is void
    but for the voxels the noise lifts."""
    completed = bodies.copy()
    for number, box in enumerate(label_boxes(bodies), start=1):
        if box is None:
            continue
        # The hull lies within the body's box: work there, one background voxel around it.
        rows = slice(max(box[1].start - 1, 0), box[1].stop + 1)
        columns = slice(max(box[2].start - 1, 0), box[2].stop + 1)
        for k in range(box[0].start, box[0].stop):
            mask = bodies[k, rows, columns] == number
            if not mask.any():
                continue
            hull = convex_hull_image(mask)  # type: ignore[no-untyped-call]
            # Only the hull's interior: its rim is where cortex and canal partial volume lie.
            here = completed[k, rows, columns]
            room = allowed[k, rows, columns]
            add = ndimage.binary_erosion(hull) & room & (here == 0)
            # A lesion's bite is tissue; single voxels among void (a disc's annulus, where the
            # noise lifted a few above the void) are not: most of a voxel's 3 x 3 must be room.
            add &= ndimage.correlate(room.astype(np.uint8), _SQUARE, mode="constant") >= (
                COMPLETION_MIN_ROOM)
            here[add] = number
    return completed


def _split_tall(bodies: np.ndarray, signal_loss: np.ndarray, geometry: VolumeGeometry,
                max_height_mm: float) -> np.ndarray:
    """Split bodies taller than one vertebra at their weakest slab along S-I (fewest voxels
    times lowest loss: the disc), then number all bodies cranio-caudally again."""
    axis, sign = geometry.voxel_axis(SUPERIOR_INFERIOR)
    step = geometry.spacing_mm[axis]
    loss = np.nan_to_num(signal_loss, nan=0.0)
    pieces: list[np.ndarray] = [bodies == n for n in range(1, int(bodies.max()) + 1)]
    done: list[np.ndarray] = []
    while pieces:
        piece = pieces.pop()
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(piece.any(axis=other))
        if (present[-1] - present[0] + 1) * step <= max_height_mm or present.size < 3:
            done.append(piece)
            continue
        inner = present[1:-1]
        scores = [float(piece.take(i, axis=axis).sum())
                  * float(np.median(loss.take(i, axis=axis)[piece.take(i, axis=axis)]))
                  for i in inner]
        cut = int(inner[int(np.argmin(scores))])
        index = np.arange(piece.shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)])
        below, above = piece & (index < cut), piece & (index > cut)
        pieces.extend(part for part in (below, above) if part.any())
    other = tuple(a for a in range(3) if a != axis)
    positions = np.arange(bodies.shape[axis])

    def mean_position(mask: np.ndarray) -> float:
        """np.argwhere(mask)[:, axis].mean(), from the count in each slab."""
        counts = mask.sum(axis=other)
        return int((counts * positions).sum()) / int(counts.sum())

    order = sorted(done, key=lambda m: -sign * mean_position(m))
    numbered = np.zeros(bodies.shape, dtype=np.int16)
    for number, mask in enumerate(order, start=1):
        numbered[mask] = number
    return numbered


def _points(labels: np.ndarray, number: int, box: tuple[slice, ...]) -> np.ndarray:
    """np.argwhere(labels == number), read in the label's box (find_objects) only."""
    points: np.ndarray = np.argwhere(labels[box] == number) + [b.start for b in box]
    return points


def _posterior_elements(bone: np.ndarray, bodies: np.ndarray, geometry: VolumeGeometry,
                        parameters: SpineParameters) -> np.ndarray:
    """Marrow behind each body (and not part of it), numbered like the body at its level."""
    touching = np.zeros(bodies.shape, dtype=bool)  # a body and its face neighbours
    if (box := box_around(bodies > 0, (1, 1, 1))) is not None:
        touching[box] = ndimage.binary_dilation(bodies[box] > 0)
    labels, count = ndimage.label(bone & ~touching)
    posterior = np.zeros(bodies.shape, dtype=np.int16)
    if count == 0:
        return posterior
    boxes = label_boxes(labels)
    centres = {n: geometry.to_patient(_points(bodies, n, box).mean(axis=0))
               for n, box in enumerate(label_boxes(bodies), start=1)
               if box is not None}
    for part in parts(labels, geometry):
        nearest = min(centres, key=lambda n: abs(centres[n][SUPERIOR_INFERIOR]
                                                 - part.centroid[SUPERIOR_INFERIOR]))
        centre = centres[nearest]
        behind = part.centroid[ANTERIOR_POSTERIOR] - centre[ANTERIOR_POSTERIOR]
        if (part.volume_mm3 >= parameters.min_element_volume_mm3
                and part.extent[LEFT_RIGHT] <= parameters.max_element_extent_mm
                and part.extent[ANTERIOR_POSTERIOR] <= parameters.max_element_extent_mm
                and 10.0 <= behind <= 90.0
                and abs(part.centroid[LEFT_RIGHT] - centre[LEFT_RIGHT])
                <= parameters.max_midline_offset_mm
                and abs(part.centroid[SUPERIOR_INFERIOR] - centre[SUPERIOR_INFERIOR])
                <= parameters.max_height_mm / 2):
            here = boxes[part.label - 1]
            posterior[here][labels[here] == part.label] = nearest
    return posterior
