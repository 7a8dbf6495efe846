"""Tissue mask robust to Rician noise, with the noise level measured from air."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def in_plane_box(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice] | None:
    """Every slice, and the rows and columns of mask's voxels widened by margin (within the
    grid): where an in-plane filter of half-width margin must run for its values on mask to
    be the whole grid's. None when mask is empty."""
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    columns = np.flatnonzero(mask.any(axis=(0, 1)))
    if rows.size == 0:
        return None
    return (slice(None), slice(max(int(rows[0]) - margin, 0), int(rows[-1]) + margin + 1),
            slice(max(int(columns[0]) - margin, 0), int(columns[-1]) + margin + 1))


def _along(axis: int, start: int, stop: int) -> tuple[slice, ...]:
    index = [slice(None)] * 3
    index[axis] = slice(start, max(stop, start))
    return tuple(index)


def _square_pass(mask: np.ndarray, axis: int, radius: int, erode: bool) -> np.ndarray:
    """One axis of an in-plane square: each voxel AND (erode) or OR (dilate) its radius
    neighbours along axis, the grid's outside counting as background."""
    result = mask.copy()
    size = mask.shape[axis]
    for step in range(1, radius + 1):
        ahead, behind = mask[_along(axis, step, size)], mask[_along(axis, 0, size - step)]
        if erode:
            result[_along(axis, 0, size - step)] &= ahead
            result[_along(axis, size - step, size)] = False
            result[_along(axis, step, size)] &= behind
            result[_along(axis, 0, step)] = False
        else:
            result[_along(axis, 0, size - step)] |= ahead
            result[_along(axis, step, size)] |= behind
    return result


def square_eroded(mask: np.ndarray, radius: int) -> np.ndarray:
    """ndimage.binary_erosion by np.ones((1, 2 radius + 1, 2 radius + 1)), exactly: a
    square is a row by a column, so two passes of shifted ANDs (about twenty times faster
    than scipy's per-voxel structuring element on a 512 x 512 stack)."""
    return _square_pass(_square_pass(mask, 1, radius, True), 2, radius, True)


def square_dilated(mask: np.ndarray, radius: int) -> np.ndarray:
    """ndimage.binary_dilation by np.ones((1, 2 radius + 1, 2 radius + 1)), exactly."""
    return _square_pass(_square_pass(mask, 1, radius, False), 2, radius, False)


def box_around(mask: np.ndarray, margins: tuple[int, int, int],
               ) -> tuple[slice, slice, slice] | None:
    """mask's bounding box widened by margins voxels along each axis (within the grid): where
    an operation reaching that far from mask must run for its values to be the whole grid's.
    None when mask is empty."""
    box = []
    for axis, margin in enumerate(margins):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if present.size == 0:
            return None
        box.append(slice(max(int(present[0]) - margin, 0), int(present[-1]) + margin + 1))
    return box[0], box[1], box[2]


Box = tuple[slice, slice, slice]


def label_boxes(labels: np.ndarray) -> list[Box | None]:
    """ndimage.find_objects(labels), exactly, worked in the box of the labelled voxels: the
    bodies fill a small part of a stack, and find_objects reads every voxel (8 ms on
    20 x 512 x 512; the analysis asks for the same bodies' boxes a dozen times)."""
    box = box_around(labels > 0, (0, 0, 0))
    if box is None:
        return []
    starts = [part.start for part in box]
    return [None if found is None else (
        slice(found[0].start + starts[0], found[0].stop + starts[0]),
        slice(found[1].start + starts[1], found[1].stop + starts[1]),
        slice(found[2].start + starts[2], found[2].stop + starts[2]))
        for found in ndimage.find_objects(labels[box])]


def labelled(mask: np.ndarray, box: Box | None = None) -> tuple[np.ndarray, int]:
    """ndimage.label(mask), exactly, labelled in box (which holds every voxel of mask; mask's
    bounding box when None): the numbering follows the voxels' raster order, the same in any
    box that holds them all, and the rest of a 20 x 512 x 512 stack (20-37 ms to label) is
    background."""
    if box is None:
        box = box_around(mask, (0, 0, 0))
    labels = np.zeros(mask.shape, dtype=np.int32)
    if box is None:
        return labels, 0
    labels[box], count = ndimage.label(mask[box])
    return labels, int(count)


def voxel_indices(mask: np.ndarray) -> np.ndarray:
    """np.argwhere(mask), exactly (same rows, same order), read in mask's box only."""
    box = box_around(mask, (0, 0, 0))
    if box is None:
        return np.empty((0, mask.ndim), dtype=np.intp)
    found: np.ndarray = np.argwhere(mask[box]) + [part.start for part in box]
    return found


def reach_in_voxels(distance_mm: float, spacing_mm: tuple[float, float, float],
                    ) -> tuple[int, int, int]:
    """Voxels along each axis that distance_mm can span, one more for safety."""
    reach = [int(np.ceil(distance_mm / max(s, 1e-6))) + 1 for s in spacing_mm]
    return reach[0], reach[1], reach[2]


def near(mask: np.ndarray, distance_mm: float,
         spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Voxels sharing a face with mask (whatever the spacing) or within distance_mm of it.
    Run in mask's box widened by that reach: every mask voxel is inside, so the distances
    there are the whole grid's, and beyond it nothing is near."""
    result = np.zeros(mask.shape, dtype=bool)
    box = box_around(mask, reach_in_voxels(distance_mm, spacing_mm))
    if box is None:
        return result
    around = mask[box]
    result[box] = ndimage.binary_dilation(around) | (
        ndimage.distance_transform_edt(~around, sampling=spacing_mm) <= distance_mm)
    return result


def closed_in_plane(mask: np.ndarray, disk: np.ndarray) -> np.ndarray:
    """mask | its closing by the in-plane disk (outside the grid counts as background), in
    mask's box widened by the disk's diameter: a closing reaches no farther."""
    result = mask.copy()
    box = box_around(mask, (0, disk.shape[0], disk.shape[1]))
    if box is not None:
        result[box] |= disk_eroded(disk_dilated(mask[box], disk), disk, outside=False)
    return result


def within_mm(distance_mm: float, pixel_mm: tuple[float, float]) -> np.ndarray:
    """The in-plane offsets at most distance_mm away, as a centred disk; a distance computed
    as ndimage.distance_transform_edt computes it (products, squares, their sum, its root),
    so that eroding by it keeps exactly the voxels the transform puts farther."""
    reach = [int(np.ceil(distance_mm / max(p, 1e-6))) for p in pixel_mm]
    rows, columns = np.ogrid[-reach[0]:reach[0] + 1, -reach[1]:reach[1] + 1]
    squared = ((0.0 + (rows.astype(np.float64) * pixel_mm[0]) ** 2)
               + (columns.astype(np.float64) * pixel_mm[1]) ** 2)
    disk: np.ndarray = np.sqrt(squared) <= distance_mm
    return disk


def _row_runs(disk: np.ndarray) -> list[tuple[int, int]] | None:
    """(row offset, half-width) of each row of a centred disk whose rows are runs centred on
    its middle column (any ellipse on the grid), or None for another shape."""
    rows, columns = disk.shape
    if rows % 2 == 0 or columns % 2 == 0:
        return None
    runs = []
    for index, row in enumerate(disk):
        width = int(row.sum())
        if width == 0:
            continue
        half = (width - 1) // 2
        centre = columns // 2
        if width % 2 == 0 or not row[centre - half:centre + half + 1].all():
            return None
        runs.append((index - rows // 2, half))
    return runs or None  # (an empty disk: scipy's own answer)


def _along_rows(step: int, rows: int) -> tuple[slice, slice]:
    """(where, from where): result[where] combines source[from where], the row step away."""
    if step >= 0:
        return slice(0, max(rows - step, 0)), slice(step, rows)
    return slice(-step, rows), slice(0, max(rows + step, 0))


def disk_dilated(mask: np.ndarray, disk: np.ndarray) -> np.ndarray:
    """ndimage.binary_dilation(mask, disk[None]) (outside the grid: background), exactly:
    a disk is a stack of centred row runs, so ORs of shifted copies, a run widened one step
    at a time (several times faster than a per-voxel structuring element of 30-120 pixels)."""
    runs = _row_runs(disk)
    if runs is None:
        dilated: np.ndarray = ndimage.binary_dilation(mask, structure=disk[None])
        return dilated
    return _by_row_runs(mask, runs, np.logical_or, clear_outside=False)


def disk_eroded(mask: np.ndarray, disk: np.ndarray, outside: bool) -> np.ndarray:
    """ndimage.binary_erosion(mask, disk[None], border_value=outside), exactly: ANDs of
    shifted copies (see disk_dilated). outside: what the grid's outside counts as."""
    runs = _row_runs(disk)
    if runs is None:
        eroded: np.ndarray = ndimage.binary_erosion(mask, structure=disk[None],
                                                     border_value=int(outside))
        return eroded
    return _by_row_runs(mask, runs, np.logical_and, clear_outside=not outside)


def _by_row_runs(mask: np.ndarray, runs: list[tuple[int, int]], combine: np.ufunc,
                 clear_outside: bool) -> np.ndarray:
    """Each voxel combined (OR: dilation, AND: erosion) with its partners at every offset of
    the runs. A partner outside the grid adds nothing to the combination, or, with
    clear_outside, clears the voxel (an erosion whose outside is background)."""
    rows, columns = mask.shape[1:]
    run = mask.copy()
    result = np.full(mask.shape, combine is np.logical_and, dtype=bool)
    for half in range(max(h for _, h in runs) + 1):
        if half:
            combine(run[:, :, :-half], mask[:, :, half:], out=run[:, :, :-half])
            combine(run[:, :, half:], mask[:, :, :-half], out=run[:, :, half:])
            if clear_outside:
                run[:, :, max(columns - half, 0):] = False
                run[:, :, :half] = False
        for step in (s for s, h in runs if h == half):
            where, source = _along_rows(step, rows)
            combine(result[:, where], run[:, source], out=result[:, where])
            if clear_outside:
                result[:, _beyond(step, rows)] = False
    return result


def _beyond(step: int, rows: int) -> slice:
    """The rows whose partner the row step away lies outside the grid."""
    return slice(max(rows - step, 0), rows) if step >= 0 else slice(0, min(-step, rows))


def nearest_within(seeds: np.ndarray, reach_mm: np.ndarray,
                   spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Each voxel labelled with its nearest seed's label (seeds: int labels, 0 none) when it
    lies within that label's reach_mm[label]; else 0. Run in the seeds' box widened by the
    largest reach: every seed is inside, so the nearest one there is the whole grid's."""
    grown = np.zeros(seeds.shape, dtype=seeds.dtype)
    box = box_around(seeds > 0, reach_in_voxels(float(reach_mm.max()), spacing_mm))
    if box is None:
        return grown
    local = seeds[box]
    distance, nearest = ndimage.distance_transform_edt(local == 0, sampling=spacing_mm,
                                                       return_indices=True)
    label = local[tuple(nearest)]
    grown[box] = np.where(distance <= reach_mm[label], label, 0)
    return grown


def median_reaches(values: np.ndarray, threshold: float, size: int) -> np.ndarray:
    """Where the median over the in-plane size x size window (size odd, borders reflected,
    as ndimage.median_filter) is at least threshold. The median of n values reaches it when
    more than half of them do: a count, an order of magnitude cheaper than the median."""
    reaching = (values >= threshold).astype(np.float32)
    share = ndimage.uniform_filter(reaching, size=(1, size, size), mode="reflect")
    result: np.ndarray = share * (size * size) > (size * size) / 2
    return result


#: Rayleigh tail above k*sigma is exp(-k^2/2): at 5 sigma, 4e-6 of air voxels pass.
NOISE_MULTIPLE = 5.0


def estimate_noise_sigma(image: np.ndarray, rim_fraction: float = 0.06) -> float:
    """Noise sigma from the air at the edges of each slice.

    Magnitude noise in air is Rayleigh distributed with E[X^2] = 2 sigma^2. The rim of the field
    of view is mostly air; tissue that reaches into it is removed by iterative clipping at
    4 sigma, which keeps 99.97 % of Rayleigh samples.
    """
    volume = np.asarray(image)
    if volume.ndim == 2:
        volume = volume[None]
    rows, cols = volume.shape[-2:]
    r = max(1, round(rows * rim_fraction))
    c = max(1, round(cols * rim_fraction))
    rim = np.concatenate(
        [
            volume[:, :r, :].ravel(),
            volume[:, -r:, :].ravel(),
            volume[:, r:-r, :c].ravel(),
            volume[:, r:-r, -c:].ravel(),
        ]
    )
    rim = rim[np.isfinite(rim)].astype(np.float64)
    if rim.size == 0:
        return 0.0
    # Start from the lower quartile (Rayleigh: q25 = 0.7585 sigma), so tissue reaching into the
    # rim cannot inflate the first guess, then refine on the samples below 4 sigma.
    sigma = float(np.percentile(rim, 25)) / 0.7585
    if sigma <= 0:
        return 0.0
    for _ in range(10):
        kept = rim[rim <= 4.0 * sigma]
        if kept.size == 0:
            break
        new_sigma = float(np.sqrt(np.mean(kept**2) / 2.0))
        if abs(new_sigma - sigma) <= 1e-6 * max(sigma, 1e-12):
            break
        sigma = new_sigma
    return sigma


def tissue_mask(in_phase: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Voxels whose in-phase signal stands clearly above the air noise."""
    in_phase = np.asarray(in_phase)
    if sigma is None:
        sigma = estimate_noise_sigma(in_phase)
    finite = np.isfinite(in_phase)
    values = in_phase[finite]
    step = max(1, values.size // 200_000)  # a regular subsample: the 99th percentile is robust
    peak = float(np.percentile(values[::step], 99)) if values.size else 0.0
    threshold = max(NOISE_MULTIPLE * sigma, 1e-3 * peak, np.finfo(np.float64).tiny)
    mask: np.ndarray = finite & (in_phase > threshold)
    return mask
