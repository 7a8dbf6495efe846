"""A radiologist's region, given in patient coordinates, as a mask on the Dixon set's grid.

The rule for regions drawn on planes that are not the Dixon slices: a planar region is put on
the nearest Dixon slice when its plane lies within a quarter of the slice spacing of that
slice's centre and is parallel to it (its points within half a slice spacing of each other in
depth); otherwise it is refused with that reason (a region between two slices would be
measured on anatomy the radiologist did not draw on). A segmentation is sampled at the
Dixon voxel centres nearest to its own voxel centres. Pure numpy (and scikit-image for
polygon filling).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.draw import polygon as fill_polygon

from marrownode.quant.geometry import VolumeGeometry
from marrownode.quant.localisation import Localisation
from marrownode.vocabulary import FocusCategory, LocalisationMethod

PLANAR = ("POLYGON", "POLYLINE", "ELLIPSE", "CIRCLE", "POINT")
#: How far (in slice spacings) a region's plane may lie from a Dixon slice's centre.
PLANE_TOLERANCE = 0.25


@dataclass(frozen=True)
class Placed:
    """A region on the grid, or the reason it could not be placed."""

    mask: np.ndarray | None
    reason: str = ""
    slice_index: int | None = None


def to_index(geometry: VolumeGeometry, points_mm: np.ndarray) -> np.ndarray:
    """Fractional voxel indices (k, row, column) of patient points (N, 3)."""
    directions = np.array([geometry.slice_direction, geometry.row_direction,
                           geometry.column_direction]) * np.array(geometry.spacing_mm)[:, None]
    offsets = np.asarray(points_mm, dtype=np.float64) - np.asarray(geometry.origin)
    index: np.ndarray = offsets @ np.linalg.inv(directions)
    return index


def _ellipse(shape: tuple[int, int], index: np.ndarray) -> np.ndarray:
    """DICOM ELLIPSE: the end points of the major axis, then of the minor axis."""
    centre = index[:2].mean(axis=0)
    major, minor = index[1] - index[0], index[3] - index[2]
    a, b = np.linalg.norm(major) / 2.0, np.linalg.norm(minor) / 2.0
    if a == 0 or b == 0:
        return np.zeros(shape, dtype=bool)
    u, v = major / (2.0 * a), minor / (2.0 * b)
    rows, cols = np.indices(shape, dtype=np.float64)
    d = np.stack([rows - centre[0], cols - centre[1]], axis=-1)
    inside: np.ndarray = (d @ u / a) ** 2 + (d @ v / b) ** 2 <= 1.0
    return inside


def _planar(shape: tuple[int, int], graphic_type: str, index: np.ndarray) -> np.ndarray:
    if graphic_type == "ELLIPSE" and len(index) == 4:
        return _ellipse(shape, index)
    if graphic_type == "CIRCLE" and len(index) == 2:
        radius = float(np.linalg.norm(index[1] - index[0]))
        centre = index[0]
        rows, cols = np.indices(shape, dtype=np.float64)
        circle: np.ndarray = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2
        return circle
    mask = np.zeros(shape, dtype=bool)
    if graphic_type == "POINT":
        row, col = np.rint(index[0]).astype(int)
        if 0 <= row < shape[0] and 0 <= col < shape[1]:
            mask[row, col] = True
        return mask
    rr, cc = fill_polygon(index[:, 0], index[:, 1], shape)  # type: ignore[no-untyped-call]
    mask[rr, cc] = True
    return mask


def place_planar(geometry: VolumeGeometry, shape: tuple[int, int, int], graphic_type: str,
                 points_mm: np.ndarray) -> Placed:
    """A planar region (outline or defining points in patient coordinates) on its slice."""
    if graphic_type not in PLANAR:
        return Placed(None, f"graphic type {graphic_type} is not a region")
    index = to_index(geometry, points_mm)
    depth = index[:, 0]
    k = int(np.rint(depth.mean()))
    if abs(depth.mean() - k) > PLANE_TOLERANCE or np.ptp(depth) > 2 * PLANE_TOLERANCE:
        return Placed(None, "drawn on a plane that is not a Dixon slice (more than a quarter "
                      f"slice from slice {k + 1}, or oblique to the slices)")
    if not 0 <= k < shape[0]:
        return Placed(None, "drawn outside the Dixon slices")
    plane = _planar((shape[1], shape[2]), graphic_type, index[:, 1:])
    if not plane.any():
        return Placed(None, "encloses no voxel of the Dixon slices")
    mask = np.zeros(shape, dtype=bool)
    mask[k] = plane
    return Placed(mask, slice_index=k)


def place_voxels(geometry: VolumeGeometry, shape: tuple[int, int, int],
                 points_mm: np.ndarray) -> Placed:
    """A segmentation's voxel centres on the nearest Dixon voxels."""
    index = np.rint(to_index(geometry, points_mm)).astype(int)
    inside = np.all((index >= 0) & (index < np.array(shape)), axis=1)
    if not inside.any():
        return Placed(None, "no voxel inside the Dixon volume")
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(index[inside].T)] = True
    return Placed(mask)


def categorise(signal_loss: float, fat_fraction: float, fat_fraction_unambiguous: bool,
               threshold: float | None, in_phase_first: bool, margin: float) -> FocusCategory:
    """What a measured region is next to the threshold: a focus category by the same rules as
    the automatic foci, or the expected (normal) loss."""
    if threshold is None or not np.isfinite(signal_loss):
        return FocusCategory.INDETERMINATE
    # Little loss because fat dominates (above 50 % the two echoes' difference shrinks again).
    if signal_loss < threshold and fat_fraction_unambiguous and np.isfinite(fat_fraction) and (
            fat_fraction > 50.0):
        return FocusCategory.FAT_CONTAINING
    if in_phase_first and abs(signal_loss - threshold) < margin:
        return FocusCategory.INDETERMINATE
    return (FocusCategory.LOW_SIGNAL_LOSS if signal_loss < threshold
            else FocusCategory.EXPECTED_SIGNAL_LOSS)


def localisation_from_segments(vertebrae: list[tuple[str, np.ndarray]],
                               geometry: VolumeGeometry, source: str) -> Localisation:
    """Vertebral bodies given by a segmentation (an AI platform's, or the radiologist's): they
    replace the image-based localisation, numbered cranio-caudally like it."""
    shape = vertebrae[0][1].shape
    heights = [float(geometry.to_patient(np.argwhere(mask).mean(axis=0))[2])
               for _, mask in vertebrae]
    order = np.argsort(heights)[::-1]  # patient +z is superior
    bodies = np.zeros(shape, dtype=np.int16)
    labels = []
    for number, index in enumerate(order, start=1):
        name, mask = vertebrae[int(index)]
        bodies[mask & (bodies == 0)] = number
        labels.append(name)
    return Localisation(True, LocalisationMethod.SEGMENTATION,
                        f"{len(labels)} vertebrae from segmentation {source}", bodies,
                        np.zeros(shape, dtype=np.int16), labels)
