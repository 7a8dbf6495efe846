"""The vertebral column as a chain of cores: where a body can be (bone that holds a ball), which
of those candidates are bodies, and how they line up cranio-caudally.

A lumbar, thoracic or axial field of view shows a nearly straight column: its bodies lie near
one axis. A whole spine curves through its lordoses and kyphosis, and its cervical and upper
thoracic bodies are too small for the lumbar core radius: there the column is followed body to
body, small cores included, and taken when it finds clearly more bodies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from marrownode.quant.bone import opening
from marrownode.quant.geometry import (
    ANTERIOR_POSTERIOR,
    LEFT_RIGHT,
    SUPERIOR_INFERIOR,
    VolumeGeometry,
)
from marrownode.quant.localisation import SpineParameters
from marrownode.quant.masks import label_boxes, near

#: Bodies the curved column must find beyond the straight one to be taken instead.
CURVED_COLUMN_EXTRA = 3


@dataclass(frozen=True)
class Part:
    """A candidate region: its mask label, centroid and extents in patient mm."""

    label: int
    centroid: np.ndarray  # patient LPS
    extent: np.ndarray  # mm along L-R, A-P, S-I
    volume_mm3: float
    small: bool = False  # found with the small core radius (a cervical or thoracic body)


def parts(labels: np.ndarray, geometry: VolumeGeometry,
          small_cores: np.ndarray | None = None) -> list[Part]:
    """Each labelled region as a candidate part, in patient mm; small_cores marks the parts
    found with the small core radius."""
    voxel_volume = float(np.prod(geometry.spacing_mm))
    directions = np.array([geometry.slice_direction, geometry.row_direction,
                           geometry.column_direction])
    footprint = np.abs(directions).T @ np.array(geometry.spacing_mm)  # one voxel, in mm
    found = []
    for label, box in enumerate(label_boxes(labels), start=1):
        if box is None:
            continue
        index = np.argwhere(labels[box] == label) + [b.start for b in box]
        points = geometry.to_patient(index)
        extent = np.ptp(points, axis=0) + footprint
        small = bool(small_cores is not None and small_cores[tuple(index[0])])
        found.append(Part(label, points.mean(axis=0), extent, len(index) * voxel_volume,
                           small))
    return found


def find_cores(bone: np.ndarray, geometry: VolumeGeometry,
               parameters: SpineParameters) -> tuple[np.ndarray, np.ndarray]:
    """Where a vertebral body's core can be: bone that holds a ball of core_radius_mm, and
    bone apart from all of those that holds a ball of small_core_radius_mm (small bodies);
    the second mask marks the small ones."""
    spacing = geometry.spacing_mm
    cores = opening(bone, parameters.core_radius_mm, spacing)
    small = opening(bone & ~cores, parameters.small_core_radius_mm, spacing)
    labels, _ = ndimage.label(small)
    edge = np.zeros(small.shape, dtype=bool)
    edge[:, [0, -1], :] = edge[:, :, [0, -1]] = True
    along, _ = geometry.voxel_axis(SUPERIOR_INFERIOR)  # an axial stack's end slices too
    edge[tuple(slice(None) if a != along else [0, -1] for a in range(3))] = True
    # Apart from the big cores (farther than a core radius: a lumbar-size body holds no
    # second, small core), and not cut by the field's edge across the column or in-plane
    # (a cut body is small because it is cut, not because it is cervical).
    near_core = near(cores, parameters.core_radius_mm, spacing)
    beside = np.unique(labels[(near_core | edge) & small])
    small &= ~np.isin(labels, beside[beside > 0])
    return cores | small, small


def _follows(upper: Part, lower: Part, parameters: SpineParameters) -> bool:
    """The next body down the column: below, close enough, nearly in line."""
    drop = float(upper.centroid[SUPERIOR_INFERIOR] - lower.centroid[SUPERIOR_INFERIOR])
    # a level lower: not beside it (a pedicle, an arch at the same height)
    return bool(upper.extent[SUPERIOR_INFERIOR] / 2 <= drop <= parameters.max_gap_mm
                and abs(upper.centroid[LEFT_RIGHT] - lower.centroid[LEFT_RIGHT])
                <= parameters.column_tolerance_mm
                and abs(upper.centroid[ANTERIOR_POSTERIOR]
                        - lower.centroid[ANTERIOR_POSTERIOR]) <= parameters.column_tolerance_mm)


def find_column(candidates: list[Part], body_centre: np.ndarray,
                parameters: SpineParameters) -> list[Part]:
    """The bodies that form one cranio-caudal column near the midline: along one straight
    axis, as a lumbar (or thoracic, or cervical) field of view shows it, unless following
    the column body to body finds CURVED_COLUMN_EXTRA more of them (a whole spine, through
    its lordoses and kyphosis; or a cervical stack, whose bodies hold small cores only)."""
    plausible = [
        p for p in candidates
        if p.volume_mm3 >= (parameters.min_small_core_volume_mm3 if p.small
                            else parameters.min_core_volume_mm3)
        and (not p.small or p.volume_mm3 >= parameters.min_small_fill * np.prod(p.extent))
        and (parameters.min_small_depth_mm if p.small else parameters.min_depth_mm)
        <= p.extent[ANTERIOR_POSTERIOR] <= parameters.max_depth_mm
        and p.extent[LEFT_RIGHT] <= parameters.max_width_mm
        and p.extent[SUPERIOR_INFERIOR] <= parameters.max_height_mm
        and abs(p.centroid[LEFT_RIGHT] - body_centre[LEFT_RIGHT])
        <= parameters.max_midline_offset_mm
    ]
    plausible.sort(key=lambda p: -p.centroid[SUPERIOR_INFERIOR])  # cranial first
    straight = _extended(_straight_column([p for p in plausible if not p.small], parameters),
                         [p for p in plausible if not p.small], parameters)
    curved = _curved_column(plausible, parameters)
    return curved if len(curved) >= len(straight) + CURVED_COLUMN_EXTRA else straight


def _extended(run: list[Part], plausible: list[Part], parameters: SpineParameters,
              ) -> list[Part]:
    """The straight run continued body to body at both ends (_follows), and completed between
    them: the lordosis, or a patient lying tilted, carries the top and bottom bodies of a
    lumbar view off any straight axis through the others, and the apex of the lordosis (its
    most anterior body) off the axis in the middle of the run."""
    if not run:
        return run
    chain = list(run)
    while True:
        above = [p for p in plausible if p not in chain and _follows(p, chain[0], parameters)]
        below = [p for p in plausible if p not in chain and _follows(chain[-1], p, parameters)]
        if not above and not below:
            return _completed(chain, plausible, parameters)
        if above:
            chain.insert(0, max(above, key=lambda p: p.volume_mm3))
        if below:
            chain.append(max(below, key=lambda p: p.volume_mm3))


def _completed(chain: list[Part], plausible: list[Part], parameters: SpineParameters,
               ) -> list[Part]:
    """The chain with every body that lies in line between two of its neighbours put back:
    a column skips no vertebra."""
    completed = list(chain)
    index = 0
    while index < len(completed) - 1:
        upper, lower = completed[index], completed[index + 1]
        between = [p for p in plausible if p not in completed
                   and _follows(upper, p, parameters) and _follows(p, lower, parameters)]
        if between:
            completed.insert(index + 1, max(between, key=lambda p: p.volume_mm3))
        else:
            index += 1
    return completed


def _straight_column(plausible: list[Part], parameters: SpineParameters) -> list[Part]:
    """The longest run of parts near one straight cranio-caudal axis (their volume-weighted
    mean position)."""
    if not plausible:
        return []
    weights = np.array([p.volume_mm3 for p in plausible])
    centre = np.array([p.centroid for p in plausible])
    axis_lr = float(np.average(centre[:, LEFT_RIGHT], weights=weights))
    axis_ap = float(np.average(centre[:, ANTERIOR_POSTERIOR], weights=weights))
    aligned = [p for p in plausible
               if abs(p.centroid[LEFT_RIGHT] - axis_lr) <= parameters.column_tolerance_mm
               and abs(p.centroid[ANTERIOR_POSTERIOR] - axis_ap)
               <= parameters.column_tolerance_mm]
    runs: list[list[Part]] = []
    for part in aligned:
        if runs and (runs[-1][-1].centroid[SUPERIOR_INFERIOR] - part.centroid[SUPERIOR_INFERIOR]
                     <= parameters.max_gap_mm):
            runs[-1].append(part)
        else:
            runs.append([part])
    return max(runs, key=len) if runs else []


def _curved_column(plausible: list[Part], parameters: SpineParameters) -> list[Part]:
    """The chain of parts, each below and near the one above it (_follows), with the most
    core volume: vertebral bodies, not the smaller arches and processes beside them."""
    best = [p.volume_mm3 for p in plausible]
    previous: list[int | None] = [None] * len(plausible)
    for i, part in enumerate(plausible):
        for j in range(i):
            if _follows(plausible[j], part, parameters) and (
                    best[j] + part.volume_mm3 > best[i]):
                best[i], previous[i] = best[j] + part.volume_mm3, j
    chain: list[Part] = []
    end: int | None = int(np.argmax(best)) if best else None
    while end is not None:
        chain.append(plausible[end])
        end = previous[end]
    return chain[::-1]
