"""A whole spine on one sagittal stack, from the skull base to the sacrum, built from the anatomy.

The column follows its three curves: the cervical lordosis (apex about C4-C5), the thoracic
kyphosis (apex about T7) and the lumbar lordosis (apex about L3-L4), then the sacrum kinks
back. Bodies grow from the cervical (about 14 mm tall, 16 mm deep) to the lumbar ones (26 mm,
32 mm), discs from 4-5 mm to 11 mm. C2 carries the dens, a peg of cortex and marrow rising
16 mm from its body; in front of the dens sits the anterior arch of C1, a small ring of bone,
and above it the clivus of the skull base slopes up and forward, with marrow inside its
cortex; the brain and the cord fill the skull and the canal, the lungs lie beside the
thoracic spine. Each mobile body has the lumbar phantom's cortex, endplates, basivertebral
vein, discs with an annulus and a neural arch (synthetic/lumbar.py).

Truth as for the lumbar phantom: each body's level (C2 ... S3); C1's arch and the clivus are
bone with marrow but no vertebral body.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from marrownode.synthetic.anatomy import ANATOMY_CODES
from marrownode.synthetic.geometry import geometry_for
from marrownode.synthetic.lumbar import (
    _SACRUM,
    SACRAL_KINK_DEGREES,
    LumbarPhantom,
    _ellipse,
    sample_grid,
)
from marrownode.synthetic.segments import CORTEX_MM, Segment, _local, _unit, draw_column

#: normal; a metastasis in T8; a transitional lumbosacral segment (a sixth lumbar-type body,
#: L6, above the sacrum).
WHOLE_SPINE_VARIANTS = ("normal", "metastasis_t8", "transitional")

@dataclass(frozen=True)
class _Level:
    name: str
    height: float
    disc_below: float
    half_depth: float
    half_width: float


def _levels(variant: str = "normal") -> list[_Level]:
    """C2 to L5 (or L6) with their sizes: the cervical bodies small, growing down the
    column."""
    levels = [_Level("C2", 16.0, 4.5, 8.0, 9.0)]
    levels += [_Level(f"C{n}", 13.5 + 0.3 * (n - 3), 5.0, 8.0 + 0.3 * (n - 3),
                      10.5 + 0.5 * (n - 3)) for n in range(3, 8)]
    levels += [_Level(f"T{n}", 16.0 + 7.0 * (n - 1) / 11, 4.0 + 2.0 * (n - 1) / 11,
                      10.0 + 4.0 * (n - 1) / 11, 12.5 + 6.0 * (n - 1) / 11)
               for n in range(1, 13)]
    levels += [_Level(name, height, disc, 16.0, 22.0) for name, height, disc in
               (("L1", 25.0, 9.0), ("L2", 26.0, 10.0), ("L3", 27.0, 10.5), ("L4", 27.0, 11.0),
                ("L5", 26.0, 11.0))]
    if variant == "transitional":
        levels.append(_Level("L6", 25.0, 10.0, 16.0, 22.0))
    return levels


#: The column's heading (degrees; positive: going down, it moves posteriorly) at levels along
#: it, interpolated between: cervical lordosis, thoracic kyphosis, lumbar lordosis.
_HEADING = (("C2", -18.0), ("C7", 16.0), ("T7", 0.0), ("T12", -22.0), ("L3", -4.0),
            ("L5", 20.0))
#: Dens: height above C2's body and radius (mm).
DENS_HEIGHT_MM, DENS_RADIUS_MM = 16.0, 5.0
#: The clivus rises from the basion this far forward of the vertical (degrees).
CLIVUS_TILT_DEGREES = 30.0


def whole_column(variant: str = "normal") -> list[Segment]:
    """The segments cranio-caudally, C2's body top near patient (0, 0, 0)."""
    levels = _levels(variant)
    starts = np.cumsum([0.0] + [lv.height + lv.disc_below for lv in levels[:-1]])
    middles = {lv.name: s + lv.height / 2 for lv, s in zip(levels, starts, strict=True)}
    knots_s = [middles[name] for name, _ in _HEADING]
    knots_angle = [np.radians(angle) for _, angle in _HEADING]
    position = np.zeros(2)  # (y, z) of the current point on the column's axis
    s, step = 0.0, 0.5
    segments: list[Segment] = []
    angle = 0.0
    for level, start in zip(levels, starts, strict=True):
        while s < start + level.height / 2:  # march to this body's centre
            angle = float(np.interp(s, knots_s, knots_angle))
            position += step * np.array([np.sin(angle), -np.cos(angle)])
            s += step
        centre = np.array([0.0, position[0], position[1]])
        segments.append(Segment(level.name, centre, _unit(-np.sin(angle), np.cos(angle)),
                                _unit(np.cos(angle), np.sin(angle)), level.height,
                                level.disc_below, level.half_depth, level.half_width))
    last = segments[-1]
    tilt = angle + np.radians(SACRAL_KINK_DEGREES)
    down = _unit(np.sin(tilt), -np.cos(tilt))
    top = last.centre - last.axis * (last.height / 2 + last.disc_below)
    for name, height, disc in _SACRUM:
        centre = top + down * height / 2
        segments.append(Segment(name, centre, -down, _unit(np.cos(tilt), np.sin(tilt)),
                                height, disc))
        top = centre + down * (height / 2 + disc)
    return segments


def _craniocervical(labels: np.ndarray, vertebra: np.ndarray, c2: Segment, x: np.ndarray,
                    y: np.ndarray, z: np.ndarray) -> None:
    """The dens (part of C2), C1's anterior arch in front of it, the clivus above, and the
    brain behind the clivus and above the canal."""
    code = ANATOMY_CODES
    u, v, w = _local(c2, x, y, z)
    radial = np.hypot(v, w)
    top = c2.height / 2
    tip = c2.centre + c2.axis * (top + DENS_HEIGHT_MM)
    # The clivus: from the basion, 5 mm above the dens tip, a slab of bone 8 mm thick rising
    # 40 mm up and forward, 30 degrees from the vertical, with marrow inside its cortex.
    basion = tip + np.array([0.0, 0.0, 5.0])
    rise = np.array([0.0, -np.sin(np.radians(CLIVUS_TILT_DEGREES)),
                     np.cos(np.radians(CLIVUS_TILT_DEGREES))])
    along = (y - basion[1]) * rise[1] + (z - basion[2]) * rise[2]
    across = (y - basion[1]) * rise[2] - (z - basion[2]) * rise[1]  # positive: behind it
    brain = (across > 4.0) & (z > basion[2] - 4.0) & (np.abs(x) <= 70.0)
    labels[brain] = code["cord"]
    clivus = (along >= 0) & (along <= 40.0) & (np.abs(across) <= 4.0) & (np.abs(x) <= 14.0)
    labels[clivus] = code["cortex"]
    labels[clivus & (along >= CORTEX_MM) & (along <= 40.0 - CORTEX_MM)
           & (np.abs(across) <= 4.0 - CORTEX_MM) & (np.abs(x) <= 14.0 - CORTEX_MM)] = (
        code["marrow"])
    # C1's anterior arch: a ring section in front of the dens, 10 mm tall, 6 mm deep.
    arch_u, arch_v = top + DENS_HEIGHT_MM / 2 + 1.0, -DENS_RADIUS_MM - 5.5
    arch = _ellipse(u, v, arch_u, arch_v, 5.0, 3.0) & (np.abs(w) <= 12.0)
    labels[arch] = code["cortex"]
    labels[_ellipse(u, v, arch_u, arch_v, 5.0 - CORTEX_MM, 3.0 - CORTEX_MM)
           & (np.abs(w) <= 11.0)] = code["marrow"]
    # The dens: a peg on C2's body, its tip rounded.
    shoulder = top + DENS_HEIGHT_MM - DENS_RADIUS_MM  # where the rounded tip begins
    peg = (u >= top - 1.0) & (radial <= DENS_RADIUS_MM) & (
        (u <= shoulder) | ((u - shoulder) ** 2 + radial ** 2 <= DENS_RADIUS_MM ** 2))
    core = peg & (radial <= DENS_RADIUS_MM - CORTEX_MM) & (
        u <= top + DENS_HEIGHT_MM - CORTEX_MM) & (u >= top - 2.0)
    labels[peg] = code["cortex"]
    labels[core] = code["marrow"]
    vertebra[core] = 1


def _trunk(x: np.ndarray, y: np.ndarray, z: np.ndarray, segments: list[Segment]) -> np.ndarray:
    """Head, neck and trunk around the column: skin fat, the viscera in front, paraspinal
    muscle behind, the lungs beside the thoracic spine."""
    code = ANATOMY_CODES
    labels = np.full(x.shape, code["background"], dtype=np.int16)
    spine_y = np.interp(z, [s.centre[2] for s in reversed(segments)],
                        [s.centre[1] for s in reversed(segments)])
    neck = z > segments[6].centre[2]  # above C7: a narrower neck
    half = np.where(neck, 60.0, 150.0)
    labels[(np.abs(x) <= half) & (y > spine_y - np.where(neck, 60.0, 110.0))
           & (y < spine_y + np.where(neck, 95.0, 100.0))] = code["subcutaneous_fat"]
    inner = (np.abs(x) <= half - 10.0) & (y > spine_y - np.where(neck, 50.0, 100.0)) & (
        y < spine_y + np.where(neck, 85.0, 90.0))  # the nuchal muscles 25 mm past the tips
    labels[inner] = code["viscera"]
    labels[inner & (y > spine_y + 10.0)] = code["muscle"]  # paraspinal and nuchal muscle
    thorax = (z < segments[6].centre[2]) & (z > segments[17].centre[2])
    for side in (-1.0, 1.0):
        lung = _ellipse(x, y, side * 60.0, spine_y - 20.0, 45.0, 60.0) & thorax
        labels[lung] = code["lung"]
    return labels


def _sample(x: np.ndarray, y: np.ndarray, z: np.ndarray, variant: str, segments: list[Segment],
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    code = ANATOMY_CODES
    labels = _trunk(x, y, z, segments)
    vertebra = np.zeros(x.shape, dtype=np.int16)
    posterior = np.zeros(x.shape, dtype=np.int16)
    draw_column(labels, vertebra, posterior, x, y, z, segments, code["marrow"])
    _craniocervical(labels, vertebra, segments[0], x, y, z)
    masks: dict[str, np.ndarray] = {}
    if variant == "metastasis_t8":
        number = next(n for n, s in enumerate(segments, start=1) if s.name == "T8")
        u, v, w = _local(segments[number - 1], x, y, z)
        mask = (u ** 2 + v ** 2 + w ** 2 <= 6.0 ** 2) & (vertebra == number)
        labels[mask] = code["lesion"]
        masks["metastasis"] = mask
    return labels, vertebra, posterior, masks


#: The whole-spine sagittal grid: (slices, rows, columns), pixel spacing, slice thickness.
WHOLE_SPINE_GRID = ((11, 640, 256), 1.15, 4.0)


def whole_spine_phantom(variant: str = "normal", supersample: int = 3) -> LumbarPhantom:
    """The whole spine on one sagittal stack (WHOLE_SPINE_GRID: 736 x 294 mm, as composed
    from the stations of a whole-spine protocol), with the truth per level."""
    if variant not in WHOLE_SPINE_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(WHOLE_SPINE_VARIANTS)}, "
                         f"got {variant!r}")
    _, pixel, thickness = WHOLE_SPINE_GRID
    geometry = geometry_for("sagittal")
    segments = whole_column(variant)
    ys = [s.centre[1] for s in segments]
    zs = [s.centre[2] for s in segments]
    # The field: from above the clivus to below the sacrum, the column in the middle.
    centre = np.array([0.0, (min(ys) + max(ys)) / 2 + 15.0, (zs[0] + 60.0 + zs[-1] - 30.0) / 2])
    water, fat, (labels, vertebra, posterior, masks) = sample_grid(
        lambda x, y, z: _sample(x, y, z, variant, segments), geometry, WHOLE_SPINE_GRID,
        centre, supersample)
    return LumbarPhantom(
        labels=labels, pixel_spacing_mm=(pixel, pixel), slice_thickness_mm=thickness,
        water=water, fat=fat, vertebra=vertebra, posterior=posterior, lesion_masks=masks,
        orientation="sagittal",
        level_names={n: s.name for n, s in enumerate(segments, start=1)},
        lesion_levels={name: "T8" for name in masks}, variant=variant)
