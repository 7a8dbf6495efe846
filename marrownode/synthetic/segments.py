"""Vertebral segments drawn in patient space: each body with its cortex, endplates and
basivertebral vein, the disc below it with nucleus and annulus, the canal and the neural arch
behind it (the parts every spine phantom shares: synthetic/lumbar.py, whole_spine.py).

A segment is drawn on the sample points near it only: the points are ordered by height once,
and each drawing looks at its own band, so a column of 26 segments costs about what one
drawing over the whole grid would.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from marrownode.synthetic.anatomy import ANATOMY_CODES

HALF_WIDTH_MM, HALF_DEPTH_MM, CORTEX_MM = 22.0, 16.0, 1.0
ENDPLATE_CONCAVITY_MM = 1.5
VEIN_HALF_HEIGHT_MM, VEIN_HALF_WIDTH_MM, VEIN_DEPTH_MM = 2.5, 3.0, 8.0
CANAL_GAP_MM, CANAL_DEPTH_MM, CANAL_HALF_WIDTH_MM = 1.5, 15.0, 11.0


@dataclass(frozen=True)
class Segment:
    """One vertebral body (or sacral segment) in patient space: the centre of its body, its
    cranio-caudal axis (unit vector pointing up) and anterior-posterior axis (pointing
    back), its height and the disc below it."""

    name: str
    centre: np.ndarray
    axis: np.ndarray
    back: np.ndarray
    height: float
    disc_below: float
    #: Half depth and half width of a mobile body (cervical and thoracic ones are smaller).
    half_depth: float = HALF_DEPTH_MM
    half_width: float = HALF_WIDTH_MM

    @property
    def sacral(self) -> bool:
        """A segment of the sacrum (fused)."""
        return self.name.startswith("S")


def _unit(y: float, z: float) -> np.ndarray:
    vector = np.array([0.0, y, z])
    normalised: np.ndarray = vector / np.linalg.norm(vector)
    return normalised


def _local(segment: Segment, x: np.ndarray, y: np.ndarray, z: np.ndarray,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates in the segment's frame: u up its axis, v back, w left-right."""
    dy, dz = y - segment.centre[1], z - segment.centre[2]
    u = dy * segment.axis[1] + dz * segment.axis[2]
    v = dy * segment.back[1] + dz * segment.back[2]
    return u, v, x


def _section(v: np.ndarray, w: np.ndarray, half_depth: float, half_width: float) -> np.ndarray:
    """A rounded rectangle's squared 'radius' (< 1 inside): the body's cross-section."""
    radius: np.ndarray = (np.abs(v) / half_depth) ** 4 + (np.abs(w) / half_width) ** 4
    return radius


def _size(segment: Segment) -> tuple[float, float]:
    """Half depth and half width: sacral segments narrow caudally."""
    if not segment.sacral:
        return segment.half_depth, segment.half_width
    shrink = {"S1": 1.0, "S2": 0.78, "S3": 0.6}[segment.name]
    return HALF_DEPTH_MM * shrink, (HALF_WIDTH_MM + 6.0) * shrink


def _concavity(segment: Segment) -> float:
    """How far the endplates dip (mm): 1.5 mm in a lumbar body, less in smaller ones."""
    return ENDPLATE_CONCAVITY_MM * min(1.0, segment.half_depth / HALF_DEPTH_MM)


def _disc_frame(upper: Segment, lower: Segment) -> Segment:
    """The disc between two segments as a frame: its middle, and the mean of their axes."""
    axis = upper.axis + lower.axis
    axis = axis / np.linalg.norm(axis)
    back = np.array([0.0, axis[2], -axis[1]])
    top = upper.centre - upper.axis * upper.height / 2
    bottom = lower.centre + lower.axis * lower.height / 2
    return Segment("disc", (top + bottom) / 2, axis, back, 0.0, 0.0)


def _disc(labels: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray,
          upper: Segment, lower: Segment) -> None:
    """A biconvex disc: a nucleus inside a darker annulus; a sacral remnant thin and dark."""
    code = ANATOMY_CODES
    u, v, w = _local(_disc_frame(upper, lower), x, y, z)
    half_depth, half_width = _size(lower)
    radius = _section(v, w, half_depth * 1.04, half_width * 1.04)
    half_height = upper.disc_below / 2 + _concavity(lower) * np.clip(1 - radius, 0, 1)
    disc = (radius <= 1.0) & (np.abs(u) <= half_height)
    nucleus = disc & (_section(v, w, half_depth * 0.62, half_width * 0.62) <= 1.0)
    labels[disc] = code["annulus"]  # sacral remnants: annulus alone, thin and dark
    if not upper.sacral:
        labels[nucleus] = code["disc"]


def _body(labels: np.ndarray, vertebra: np.ndarray, number: int, segment: Segment,
          x: np.ndarray, y: np.ndarray, z: np.ndarray, marrow: int) -> None:
    """One body: a 1 mm cortex and biconcave 1 mm endplates around marrow; the
    basivertebral vein through the middle of its posterior wall."""
    code = ANATOMY_CODES
    u, v, w = _local(segment, x, y, z)
    half_depth, half_width = _size(segment)
    radius = _section(v, w, half_depth, half_width)
    surface = segment.height / 2 - _concavity(segment) * np.clip(1 - radius, 0, 1)
    outline = (radius <= 1.0) & (np.abs(u) <= surface)
    inner = (_section(v, w, half_depth - CORTEX_MM, half_width - CORTEX_MM) <= 1.0) & (
        np.abs(u) <= surface - CORTEX_MM)
    labels[outline] = code["cortex"]
    labels[inner] = marrow
    vertebra[inner] = number
    if not segment.sacral or segment.name == "S1":
        vein = ((np.abs(u) <= VEIN_HALF_HEIGHT_MM) & (np.abs(w) <= VEIN_HALF_WIDTH_MM)
                & (v >= half_depth - min(VEIN_DEPTH_MM, half_depth / 2))
                & (v <= half_depth + 0.2))
        labels[vein] = code["vein"]
        vertebra[vein] = 0


def _canal_and_arch(labels: np.ndarray, posterior: np.ndarray, number: int,
                    segment: Segment, x: np.ndarray, y: np.ndarray, z: np.ndarray,
                    marrow: int) -> None:
    """The canal behind the body (CSF, the dorsal epidural fat pad) down to the disc below,
    and the neural arch: laminae and a spinous process, marrow inside cortex."""
    code = ANATOMY_CODES
    u, v, w = _local(segment, x, y, z)
    half_depth, _ = _size(segment)
    front = half_depth + CANAL_GAP_MM
    depth = CANAL_DEPTH_MM * (0.6 if segment.sacral else 1.0)
    span = (u <= segment.height / 2 + 2.0) & (u >= -segment.height / 2 - segment.disc_below)
    canal = span & (v >= front) & (v <= front + depth) & (np.abs(w) <= CANAL_HALF_WIDTH_MM)
    labels[canal] = code["csf"]
    labels[canal & (v >= front + depth - 3.0)] = code["subcutaneous_fat"]  # epidural fat
    if segment.sacral:
        return
    back_of_canal = front + depth
    height = (u <= segment.height / 2 - 3.0) & (u >= -segment.height / 2 + 1.0)
    lamina = height & (v > back_of_canal) & (v <= back_of_canal + 7.0) & (
        np.abs(w) <= CANAL_HALF_WIDTH_MM + 5.0)
    spinous = (u <= 4.0) & (u >= -segment.height / 2 - 1.0) & (v > back_of_canal) & (
        v <= back_of_canal + 32.0) & (np.abs(w) <= 4.5)
    solid = lamina | spinous
    core = ((u <= segment.height / 2 - 3.0 - CORTEX_MM) & (u >= -segment.height / 2 + 2.0)
            & (v > back_of_canal + CORTEX_MM) & (v <= back_of_canal + 7.0 - CORTEX_MM)
            & (np.abs(w) <= CANAL_HALF_WIDTH_MM + 4.0)) | (
        (u <= 4.0 - CORTEX_MM) & (u >= -segment.height / 2) & (v > back_of_canal + CORTEX_MM)
        & (v <= back_of_canal + 32.0 - CORTEX_MM) & (np.abs(w) <= 4.5 - CORTEX_MM))
    labels[solid] = code["cortex"]
    labels[core] = marrow
    posterior[core] = number


#: A drawing's reach is widened by this much (mm): it only saves work, never clips a shape.
_REACH_MARGIN_MM = 1.0


class _Points:
    """Sample points, flat and ordered by height, so that the points near a segment are
    found by looking at its band of heights only."""

    def __init__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
        self.flat = tuple(np.asarray(a).reshape(-1) for a in (x, y, z))
        self.order = np.argsort(self.flat[2], kind="stable")
        self.heights = self.flat[2][self.order]

    def near(self, centre: np.ndarray, reach_mm: float, half_x_mm: float) -> np.ndarray:
        """Indices of the points within reach_mm of centre in the sagittal plane and within
        half_x_mm of the midline."""
        first = int(np.searchsorted(self.heights, centre[2] - reach_mm, side="left"))
        last = int(np.searchsorted(self.heights, centre[2] + reach_mm, side="right"))
        band = self.order[first:last]
        x, y, z = (a[band] for a in self.flat)
        inside = (((y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= reach_mm ** 2)
                  & (np.abs(x) <= half_x_mm))
        near: np.ndarray = band[inside]
        return near


def _draw_near(points: _Points, centre: np.ndarray, reach_mm: float, half_x_mm: float,
               targets: tuple[np.ndarray, ...], draw: Callable[..., None]) -> None:
    """Run a pointwise drawing on the points near centre only: the same result as on every
    point (the drawing sets nothing farther away), at a small part of the cost.
    `draw(*targets, x, y, z)` gets and changes the targets' values at those points."""
    near = points.near(centre, reach_mm, half_x_mm)
    flats = [target.reshape(-1) for target in targets]
    local = [flat[near] for flat in flats]
    draw(*local, *(a[near] for a in points.flat))
    for flat, values in zip(flats, local, strict=True):
        flat[near] = values


def draw_column(labels: np.ndarray, vertebra: np.ndarray, posterior: np.ndarray,
                x: np.ndarray, y: np.ndarray, z: np.ndarray, segments: list[Segment],
                marrow: int) -> None:
    """Discs, then canals and arches, then bodies (each later one drawn over the earlier),
    every segment on the points near it only (its reach follows from its own sizes)."""
    margin = _REACH_MARGIN_MM
    points = _Points(x, y, z)
    for upper, lower in itertools.pairwise(segments):
        if upper.disc_below <= 0:
            continue
        half_depth, half_width = _size(lower)
        reach = float(np.hypot(upper.disc_below / 2 + _concavity(lower), half_depth * 1.04))
        _draw_near(points, _disc_frame(upper, lower).centre, reach + margin,
                   half_width * 1.04 + margin, (labels,),
                   lambda lab, px, py, pz, a=upper, b=lower: _disc(lab, px, py, pz, a, b))
    for number, segment in enumerate(segments, start=1):
        half_depth, _ = _size(segment)
        along = segment.height / 2 + max(segment.disc_below, 1.0) + 2.0
        across = half_depth + CANAL_GAP_MM + CANAL_DEPTH_MM + 32.0
        _draw_near(points, segment.centre, float(np.hypot(along, across)) + margin,
                   CANAL_HALF_WIDTH_MM + 5.0 + margin, (labels, posterior),
                   lambda lab, post, px, py, pz, n=number, s=segment: _canal_and_arch(
                       lab, post, n, s, px, py, pz, marrow))
    for number, segment in enumerate(segments, start=1):
        half_depth, half_width = _size(segment)
        reach = float(np.hypot(segment.height / 2, half_depth + 0.2))
        _draw_near(points, segment.centre, reach + margin,
                   max(half_width, VEIN_HALF_WIDTH_MM) + margin, (labels, vertebra),
                   lambda lab, vert, px, py, pz, n=number, s=segment: _body(
                       lab, vert, n, s, px, py, pz, marrow))
