"""Normal anatomy that loses little signal inside a vertebral body, told apart from focal lesions
by where it lies in its body (docs/marrow-localisation.md, "Not a focus").

- The basivertebral vein enters every body through a notch in the middle of its posterior wall
  and runs a few millimetres forward: slow blood, no fat. A low-loss region that opens onto the
  posterior wall at mid-height, short cranio-caudally and shallow, is that vein.
- The disc partial-volumed into a thick slice that cuts an endplate (axial stacks): a region in
  the body's end slice, thinner than one slice along the column; on sagittal and coronal
  grids, a flat region against the endplate under 5 mm thick (lateral slices, where the
  endplates curve, and a sacral remnant below the last segment localised), and any region
  running on more than 2 mm past the body's end (the disc the mask took in there).
- An endplate band (Modic type 1: oedema along an endplate, beside a degenerate disc) lies
  against the cranial or caudal endplate across much of the body's depth and is thin. It is an
  endplate finding, reported per vertebra, not a focal lesion. (Modic type 2 is fatty: it loses
  as much signal as marrow and is not found here at all.)

Positions are read in the body's own frame: u along the column (the line through the
neighbouring bodies' centres, cranial positive), v across it towards the posterior wall, so the
rules hold on tilted lordotic bodies and on sagittal, coronal and axial grids alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from marrownode.quant.foci import Focus
from marrownode.quant.geometry import ANTERIOR_POSTERIOR, VolumeGeometry
from marrownode.quant.masks import label_boxes, voxel_indices
from marrownode.vocabulary import Endplate

#: The vein: its centre within this share of the body's height from mid-height ...
VEIN_MID_HEIGHT_SHARE = 0.2
#: ... its posterior end this close (mm) to the posterior wall (plus the grid's step across
#: the wall when it lies within one step: a coronal slice is 4 mm thick) ...
VEIN_WALL_MM = 3.0
#: ... at most this tall (mm, partial volume included) and this share of the body's depth.
VEIN_MAX_HEIGHT_MM = 9.0
VEIN_MAX_DEPTH_SHARE = 0.45
#: An endplate band touches an endplate (within this many mm), spans at least this share of
#: the body across the column (its depth, or its width on a coronal slice), and is at most
#: this share of its height thick.
BAND_ENDPLATE_MM = 3.0
BAND_MIN_SPAN_SHARE = 0.5
BAND_MAX_HEIGHT_SHARE = 0.4
#: A low-loss region against an endplate and thinner than this (mm) along the column is the
#: disc's partial volume (a focal lesion is at least 5 mm across: at an endplate, taller).
DISC_SLAB_MM = 5.0
#: ... and flat: across the column at least this many times its thickness along it.
DISC_SLAB_FLATNESS = 1.5
#: A low-loss region reaching further than this (mm; at least one grid step along the
#: column, a thick axial slice) past its body's end is the disc.
DISC_BEYOND_END_MM = 2.0


class Structure(StrEnum):
    """What a low-loss region inside a body is, when it is not a focal lesion."""

    BASIVERTEBRAL_VEIN = "basivertebral_vein"
    DISC_PARTIAL_VOLUME = "disc_partial_volume"
    ENDPLATE_BAND = "endplate_band"


@dataclass(frozen=True)
class EndplateBand:
    """A low-loss band along one endplate of a vertebra (the Modic type 1 pattern)."""

    vertebra: int
    endplate: Endplate
    thickness_mm: float
    signal_loss_percent: float
    mask: np.ndarray


class BodyFrames:
    """Each body's frame (centre, column axis, posterior axis), from the bodies' centres."""

    def __init__(self, bodies: np.ndarray, geometry: VolumeGeometry) -> None:
        self.bodies = bodies
        self.geometry = geometry
        self.centres = [geometry.to_patient(np.argwhere(bodies[box] == n).mean(axis=0)
                                            + [s.start for s in box])
                        if box is not None else np.full(3, np.nan)
                        for n, box in enumerate(label_boxes(bodies), start=1)]

    def axes(self, number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centre, unit column axis (cranial) and unit posterior axis of body number."""
        centres = self.centres
        index = number - 1
        upper = centres[max(index - 1, 0)]
        lower = centres[min(index + 1, len(centres) - 1)]
        column = upper - lower
        if len(centres) < 2 or not np.linalg.norm(column):
            column = np.array([0.0, 0.0, 1.0])
        column = column / np.linalg.norm(column)
        posterior = np.zeros(3)
        posterior[ANTERIOR_POSTERIOR] = 1.0
        posterior = posterior - posterior @ column * column
        norm = np.linalg.norm(posterior)
        posterior = posterior / norm if norm else np.array([0.0, 1.0, 0.0])
        return centres[index], column, posterior

    def step_along(self, axis: np.ndarray) -> float:
        """How far apart voxel centres lie along a patient axis at most: the grid's own
        uncertainty there (a 4 mm slice across the posterior wall on a coronal stack)."""
        g = self.geometry
        directions = (g.slice_direction, g.row_direction, g.column_direction)
        return max(abs(float(np.dot(d, axis))) * s
                   for d, s in zip(directions, g.spacing_mm, strict=True))

    def local(self, number: int, mask: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u, v, w) in mm of mask's voxels in body number's frame (w: across, to the side)."""
        centre, column, posterior = self.axes(number)
        points = self.geometry.to_patient(voxel_indices(mask)) - centre
        return points @ column, points @ posterior, points @ np.cross(column, posterior)


def _extent(values: np.ndarray) -> float:
    return float(np.ptp(values)) if values.size else 0.0


@dataclass(frozen=True)
class _Region:
    """A low-loss region measured in its body's frame (mm): u along the column, v across it
    towards the posterior wall, w to the side; the body's ends, height, and its depth, width
    and posterior wall where the region lies along the column."""

    u: np.ndarray
    v: np.ndarray
    w: np.ndarray
    low: float
    high: float
    depth: float
    width: float
    wall_back: float

    @property
    def height(self) -> float:
        return self.high - self.low

    @property
    def tall(self) -> float:
        return _extent(self.u)

    @property
    def deep(self) -> float:
        return _extent(self.v)

    def beyond_end(self) -> float:
        """How far (mm) the region runs on past the body's nearer end."""
        return max(self.low - float(self.u.min()), float(self.u.max()) - self.high)

    def at_end(self, within_mm: float) -> bool:
        """Whether the region reaches within within_mm of either endplate."""
        return float(self.u.max()) >= self.high - within_mm or float(self.u.min()) <= (
            self.low + within_mm)


def _measured(region: np.ndarray, number: int, frames: BodyFrames) -> _Region:
    body_u, body_v, body_w = frames.local(number, frames.bodies == number)
    u, v, w = frames.local(number, region)
    # The body's ends and back wall as percentiles: a few voxels of disc or soft tissue
    # that a small body's mask took in would move its extremes by millimetres.
    low, high = (float(q) for q in np.percentile(body_u, [1, 99]))
    level = (body_u >= u.min() - 1.0) & (body_u <= u.max() + 1.0)
    wall_back = float(np.percentile(body_v[level], 99)) if level.any() else float(body_v.max())
    return _Region(u, v, w, low, high, _extent(body_v[level]), _extent(body_w[level]),
                   wall_back)


def _is_vein(region: _Region, number: int, frames: BodyFrames) -> bool:
    # Seen en face (one coronal slice across the wall), the vein is a spot in the body's
    # last slice before the canal: the grid's step across the wall is then its uncertainty.
    step = frames.step_along(frames.axes(number)[2])
    deep = region.deep
    wall_reach = VEIN_WALL_MM + (step if deep <= step else 0.0)
    return bool(abs(float(region.u.mean()) - (region.low + region.high) / 2)
                <= VEIN_MID_HEIGHT_SHARE * region.height
                and float(region.v.max()) >= region.wall_back - wall_reach
                and region.tall <= VEIN_MAX_HEIGHT_MM and deep <= VEIN_MAX_DEPTH_SHARE
                * region.depth)


def _is_band(region: _Region) -> bool:
    # across the body: in depth on a sagittal slice, in width on a coronal one
    spans = max(region.deep / region.depth if region.depth else 0.0,
                _extent(region.w) / region.width if region.width else 0.0)
    return (region.at_end(BAND_ENDPLATE_MM) and spans >= BAND_MIN_SPAN_SHARE
            and region.tall <= BAND_MAX_HEIGHT_SHARE * region.height)


def classify(region: np.ndarray, number: int, frames: BodyFrames) -> Structure | None:
    """The normal structure a low-loss region inside body number is, or None (a lesion)."""
    if not (frames.bodies == number).any() or not region.any():
        return None
    measured = _measured(region, number, frames)
    if _is_vein(measured, number, frames):
        return Structure.BASIVERTEBRAL_VEIN
    in_end_slice, tall = measured.at_end(1.0), measured.tall
    step = frames.step_along(frames.axes(number)[1])  # the grid's step along the column
    if in_end_slice and tall < step:
        # in the body's end slice only, thinner than a slice: the disc, partial-volumed into
        # a thick slice that cuts the endplate (axial stacks)
        return Structure.DISC_PARTIAL_VOLUME
    if _is_band(measured):
        return Structure.ENDPLATE_BAND
    if measured.beyond_end() > max(DISC_BEYOND_END_MM, step):
        # running on past the body's endplate: the disc, which the body's mask took in there
        # (a tumour respects the disc)
        return Structure.DISC_PARTIAL_VOLUME
    if in_end_slice and tall < DISC_SLAB_MM and max(measured.deep, _extent(measured.w)) >= (
            DISC_SLAB_FLATNESS * tall):
        # a flat slab against the endplate, thinner than the endplate's own partial volume
        # and across less of the body than a band: the disc, or a sacral remnant below the
        # last segment localised, taken into the body's end on an in-plane grid (a round
        # spot there is a micronodule)
        return Structure.DISC_PARTIAL_VOLUME
    return None


def endplate_band(band: Focus, frames: BodyFrames) -> EndplateBand:
    """The band's endplate, thickness along the column and loss (classify said it is one)."""
    number = band.vertebra
    body_u = frames.local(number, frames.bodies == number)[0]
    u = frames.local(number, band.mask)[0]
    superior = float(u.max()) - float(body_u.max()) > float(body_u.min()) - float(u.min())
    return EndplateBand(number, Endplate.SUPERIOR if superior else Endplate.INFERIOR,
                        float(np.ptp(u)) + min(frames.geometry.spacing_mm),
                        band.signal_loss_percent, band.mask)


def without_normal_structures(foci: list[Focus], bodies: np.ndarray, geometry: VolumeGeometry,
                              ) -> tuple[list[Focus], list[EndplateBand]]:
    """The foci that are lesions, and the endplate bands; basivertebral veins dropped. Only
    regions mostly in a body are judged: its frame is known. Micronodules count in the bodies
    only: posterior elements are a few millimetres thick, and a spot under 5 mm there is
    mostly partial volume with the fat and muscle around them."""
    frames = BodyFrames(bodies, geometry)
    lesions, bands = [], []
    for focus in foci:
        in_body = _mostly_in_body(focus, bodies)
        if focus.micronodular and not in_body:
            continue
        structure = classify(focus.mask, focus.vertebra, frames) if in_body else None
        if structure == Structure.ENDPLATE_BAND and not focus.micronodular:
            bands.append(endplate_band(focus, frames))
        elif structure is None:  # a lesion (a micronodule that is a band's end is dropped)
            lesions.append(focus)
    return [focus for focus in lesions if not _of_a_band(focus, bands, frames)], bands


def _of_a_band(focus: Focus, bands: list[EndplateBand], frames: BodyFrames) -> bool:
    """Whether focus is a piece of an endplate band of its vertebra: against the same
    endplate, no thicker than a band. A band's lateral end, on a slice where it is cut off
    from the rest, is too short across the body to be a band by itself (on 4 mm slices of
    1 mm at SNR 20, a 13-voxel piece of L5's Modic band was a 12 % 'focus')."""
    if focus.micronodular or not any(band.vertebra == focus.vertebra for band in bands):
        return False
    if not _mostly_in_body(focus, frames.bodies):
        return False  # mostly in the posterior elements: no body frame to read it in
    measured = _measured(focus.mask, focus.vertebra, frames)
    if measured.tall > BAND_MAX_HEIGHT_SHARE * measured.height:
        return False
    at_superior = float(measured.u.max()) >= measured.high - BAND_ENDPLATE_MM
    at_inferior = float(measured.u.min()) <= measured.low + BAND_ENDPLATE_MM
    return any(band.vertebra == focus.vertebra and (
        at_superior if band.endplate == Endplate.SUPERIOR else at_inferior) for band in bands)


def _mostly_in_body(focus: Focus, bodies: np.ndarray) -> bool:
    """Whether most of the focus lies in its vertebra's body (the rest: its posterior
    elements), where the body's frame reads it."""
    return int((bodies[focus.mask] == focus.vertebra).sum()) * 2 > int(focus.mask.sum())
