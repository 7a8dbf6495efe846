"""A lumbar spine as it is imaged on a sagittal stack, built from the anatomy.

The column follows a lordotic arc (apex at L3-L4, about 45 degrees from L1 to S1), each body a
rounded block tilted along it, with a 1 mm cortex and biconcave 1 mm endplates; between them
biconvex discs whose nucleus is brighter than the annulus; below L5 the sacrum, its segments
fused (only thin remnants of the S1-S2 and S2-S3 discs) and tilted well past the lumbar
bodies; a basivertebral vein entering each body through a notch in the middle of its
posterior wall (on the midline slices); the canal with CSF and the dorsal epidural fat pad;
the neural arches (laminae and spinous processes, marrow inside cortex) behind it;
paraspinal muscle, psoas, the aorta, bowel and subcutaneous fat. Variants put metastases (at a
body's centre, off-centre, several), a haemangioma, Modic bands, diffuse replacement or a
transitional sixth lumbar-type body into the same anatomy.

Everything is defined in patient millimetres (x left-right, y anterior-posterior, z
superior-inferior, DICOM LPS) and sampled on any sagittal, coronal or axial grid, with partial
volume across the slice. Truth comes with it: each voxel's tissue, the body and level it
belongs to, the level names, and each lesion's mask and level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from marrownode.synthetic.anatomy import ANATOMY_CODES, ANATOMY_TISSUES, AnatomicalPhantom
from marrownode.synthetic.geometry import Geometry, geometry_for
from marrownode.synthetic.segments import (
    HALF_DEPTH_MM,
    HALF_WIDTH_MM,
    Segment,
    _local,
    _unit,
    draw_column,
)

#: What a grid's sampler returns: tissue codes first, then its truth.
SampledT = TypeVar("SampledT", bound=tuple[Any, ...])

#: Lumbar variants; each is the normal anatomy with one change.
LUMBAR_VARIANTS = ("normal", "metastasis_centre", "metastasis_off_centre", "multifocal",
                   "haemangioma", "modic_1", "modic_2", "diffuse", "transitional", "variegated")

#: Cranio-caudal: name, body height (mm, endplates included), the disc below it (mm).
_LUMBAR = (("T12", 24.0, 8.0), ("L1", 25.0, 9.0), ("L2", 26.0, 10.0), ("L3", 27.0, 10.5),
           ("L4", 27.0, 11.0), ("L5", 26.0, 11.0))
_TRANSITIONAL = ("L6", 24.0, 8.0)  # a lumbarised S1: six lumbar-type bodies
_SACRUM = (("S1", 26.0, 1.5), ("S2", 20.0, 1.2), ("S3", 15.0, 0.0))
#: Radius of the lordotic arc, and the arc length from T12's top to its apex (L3-L4).
LORDOSIS_RADIUS_MM, APEX_FROM_TOP_MM = 240.0, 148.0
#: The sacrum's axis turns this far (degrees) past the lumbar column's last direction.
SACRAL_KINK_DEGREES = 22.0
def column(variant: str = "normal") -> list[Segment]:
    """The segments cranio-caudally: the lumbar bodies along the lordotic arc, then the
    sacrum along its own, steeper axis. The arc's apex (most anterior point) lies at (y 0,
    z 0) in patient space; the column runs from z about +150 to -130."""
    levels = list(_LUMBAR)
    if variant == "transitional":
        levels.append(_TRANSITIONAL)
    segments: list[Segment] = []
    s = -APEX_FROM_TOP_MM  # arc length from the apex (negative: cranial of it)
    radius = LORDOSIS_RADIUS_MM
    angle = 0.0
    for name, height, disc in levels:
        middle = s + height / 2
        angle = middle / radius  # positive: past the apex, the axis tilts back
        centre = np.array([0.0, radius * (1 - np.cos(angle)), -radius * np.sin(angle)])
        axis = _unit(-np.sin(angle), np.cos(angle))  # up the column: toward the apex
        back = _unit(np.cos(angle), np.sin(angle))  # perpendicular to it, toward the back
        segments.append(Segment(name, centre, axis, back, height, disc))
        s += height + disc
    last = segments[-1]
    tilt = angle + np.radians(SACRAL_KINK_DEGREES)
    down = _unit(np.sin(tilt), -np.cos(tilt))  # the sacrum runs back as it goes down
    top = last.centre - last.axis * (last.height / 2 + last.disc_below)
    for name, height, disc in _SACRUM:
        centre = top + down * height / 2
        axis = -down
        back = _unit(np.cos(tilt), np.sin(tilt))
        segments.append(Segment(name, centre, axis, back, height, disc))
        top = centre + down * (height / 2 + disc)
    return segments


@dataclass
class LumbarPhantom(AnatomicalPhantom):
    """An anatomical phantom of the lumbar spine with the truth per level."""

    #: Body number (as in `vertebra`) -> anatomical name ("T12", "L1" ... "S1").
    level_names: dict[int, str] = field(default_factory=dict)
    #: Lesion name -> the level it lies in.
    lesion_levels: dict[str, str] = field(default_factory=dict)
    variant: str = "normal"


def _ellipse(a: np.ndarray, b: np.ndarray, ca: float, cb: float, ra: float,
             rb: float) -> np.ndarray:
    inside: np.ndarray = ((a - ca) / ra) ** 2 + ((b - cb) / rb) ** 2 <= 1.0
    return inside


def _soft_tissue(x: np.ndarray, y: np.ndarray, z: np.ndarray,
                 segments: list[Segment]) -> np.ndarray:
    """The trunk around the spine: skin fat, bowel, psoas, paraspinal muscle, the aorta."""
    code = ANATOMY_CODES
    labels = np.full(x.shape, code["background"], dtype=np.int16)
    labels[_ellipse(x, y, 0.0, 10.0, 150.0, 125.0)] = code["subcutaneous_fat"]
    labels[_ellipse(x, y, 0.0, 5.0, 138.0, 112.0)] = code["viscera"]
    # the spine's own depth at each height: the lordotic arc's y there
    spine_y = np.interp(z, [s.centre[2] for s in reversed(segments)],
                        [s.centre[1] for s in reversed(segments)])
    behind = (y > spine_y + HALF_DEPTH_MM + 20.0) & (y < 112.0) & (np.abs(x) < 55.0)
    labels[behind] = code["muscle"]
    for side in (-1.0, 1.0):
        psoas = ((x - side * 38.0) / 16.0) ** 2 + ((y - spine_y + 2.0) / 18.0) ** 2 <= 1.0
        labels[psoas & (z < segments[1].centre[2])] = code["muscle"]
    l4 = next(s for s in segments if s.name == "L4")
    aorta = ((x - 14.0) ** 2 + (y - (spine_y - HALF_DEPTH_MM - 14.0)) ** 2 <= 11.0 ** 2) & (
        z > l4.centre[2])
    labels[aorta] = code["aorta"]
    return labels


#: Lesions per variant: (name, level, tissue, radius mm, offset u and v from the body centre).
_LESIONS: dict[str, tuple[tuple[str, str, str, float, float, float], ...]] = {
    "metastasis_centre": (("metastasis", "L1", "lesion", 6.5, 0.0, 0.0),),
    "metastasis_off_centre": (("metastasis", "L3", "lesion", 5.0, 6.0, -7.0),),
    "multifocal": (("metastasis_1", "L1", "lesion", 6.5, 0.0, 0.0),
                   ("metastasis_2", "L3", "lesion", 5.0, 6.0, -7.0),
                   ("metastasis_3", "L5", "lesion", 6.0, -5.0, 5.0)),
    "haemangioma": (("haemangioma", "L2", "fat_lesion", 7.0, 2.0, -3.0),),
}


def _lesions(labels: np.ndarray, vertebra: np.ndarray, segments: list[Segment],
             x: np.ndarray, y: np.ndarray, z: np.ndarray, variant: str,
             ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The variant's lesions inside their bodies' marrow (they stay part of the body), and
    Modic bands along endplates; their masks and levels."""
    code = ANATOMY_CODES
    masks: dict[str, np.ndarray] = {}
    levels: dict[str, str] = {}
    by_name = {s.name: (number, s) for number, s in enumerate(segments, start=1)}
    for name, level, tissue, radius, du, dv in _LESIONS.get(variant, ()):
        number, segment = by_name[level]
        u, v, w = _local(segment, x, y, z)
        mask = ((u - du) ** 2 + (v - dv) ** 2 + w ** 2 <= radius ** 2) & (vertebra == number)
        labels[mask] = code[tissue]
        masks[name], levels[name] = mask, level
    if variant == "variegated":  # many small spots, none a focal lesion (under 5 mm)
        rng = np.random.default_rng(24)
        for level in ("L1", "L2", "L3", "L4", "L5"):
            number, segment = by_name[level]
            u, v, w = _local(segment, x, y, z)
            centres: list[np.ndarray] = []
            while len(centres) < 8:  # apart, so that no two merge into one larger spot
                centre = rng.uniform(-0.55, 0.55, 3) * (segment.height, 2 * HALF_DEPTH_MM,
                                                        2 * HALF_WIDTH_MM)
                if all(np.linalg.norm(centre - c) >= 8.0 for c in centres):
                    centres.append(centre)
            for spot, (du, dv, dw) in enumerate(centres):
                mask = ((u - du) ** 2 + (v - dv) ** 2 + (w - dw) ** 2 <= 2.4 ** 2) & (
                    vertebra == number)
                labels[mask] = code["lesion"]
                masks[f"spot_{level}_{spot}"], levels[f"spot_{level}_{spot}"] = mask, level
    if variant in ("modic_1", "modic_2"):
        for level, side in (("L4", -1.0), ("L5", 1.0)):  # both sides of the L4-L5 disc
            number, segment = by_name[level]
            u, _, _ = _local(segment, x, y, z)
            band = (vertebra == number) & (side * u >= segment.height / 2 - 7.0)
            labels[band] = code[variant]
            masks[f"{variant}_{level}"], levels[f"{variant}_{level}"] = band, level
    return masks, levels


def _sample(x: np.ndarray, y: np.ndarray, z: np.ndarray, variant: str, segments: list[Segment]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray],
                       dict[str, str]]:
    """Tissue codes, body and arch numbers, lesion masks and levels at patient points."""
    code = ANATOMY_CODES
    labels = _soft_tissue(x, y, z, segments)
    vertebra = np.zeros(x.shape, dtype=np.int16)
    posterior = np.zeros(x.shape, dtype=np.int16)
    marrow = code["replaced_marrow"] if variant == "diffuse" else code["marrow"]
    draw_column(labels, vertebra, posterior, x, y, z, segments, marrow)
    masks, levels = _lesions(labels, vertebra, segments, x, y, z, variant)
    outside = ~_ellipse(x, y, 0.0, 10.0, 150.0, 125.0)
    labels[outside] = code["background"]
    return labels, vertebra, posterior, masks, levels


#: Where the field of view is centred (patient mm): the lumbar column and the sacrum's top.
FIELD_CENTRE_MM = np.array([0.0, 40.0, 2.0])
#: The acquisition grid per plane: (slices, rows, columns), pixel spacing, slice thickness.
LUMBAR_GRIDS: dict[str, tuple[tuple[int, int, int], float, float]] = {
    "sagittal": ((11, 320, 320), 0.75, 4.0),
    "coronal": ((11, 320, 320), 0.75, 4.0),
    "axial": ((40, 256, 256), 0.9, 6.0),
}


def sample_grid(sample: Callable[[np.ndarray, np.ndarray, np.ndarray], SampledT],
                geometry: Geometry, grid: tuple[tuple[int, int, int], float, float],
                centre: np.ndarray, supersample: int, in_plane: int = 1,
                ) -> tuple[np.ndarray, np.ndarray, SampledT]:
    """Water and fat on an acquisition grid centred on `centre` (patient mm), averaged over
    `supersample` points across each slice and in_plane x in_plane points within each pixel
    (partial volume: an MR pixel integrates what it covers, so a 1 mm cortex on 0.75 mm
    pixels is a line of partly dark pixels, never a broken one); and the sample (tissue codes
    first, then the truth) at the pixels' centres."""
    shape, pixel, thickness = grid
    grid_centre = (geometry.origin + geometry.normal * thickness * (shape[0] - 1) / 2
                   + geometry.col_dir * pixel * (shape[1] - 1) / 2
                   + geometry.row_dir * pixel * (shape[2] - 1) / 2)
    table_w = np.array([w for w, _ in ANATOMY_TISSUES.values()])
    table_f = np.array([f for _, f in ANATOMY_TISSUES.values()])

    voxels = geometry.patient_grid(shape, (pixel, pixel), thickness)  # once: 27 points reuse it

    def points(offset: float, down: float = 0.0, across: float = 0.0,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, z = (a - grid_centre[i] + centre[i] + geometry.normal[i] * offset
                   + geometry.col_dir[i] * down + geometry.row_dir[i] * across
                   for i, a in enumerate(voxels))
        return x, y, z

    water = np.zeros(shape)
    fat = np.zeros(shape)
    within = (np.arange(in_plane) - (in_plane - 1) / 2) * pixel / in_plane
    count = supersample * in_plane * in_plane
    for offset in (np.arange(supersample) - (supersample - 1) / 2) * thickness / supersample:
        for down in within:
            for across in within:
                labels = sample(*points(float(offset), float(down), float(across)))[0]
                water += table_w[labels] / count
                fat += table_f[labels] / count
    return water, fat, sample(*points(0.0))


def lumbar_phantom(variant: str = "normal", orientation: str = "sagittal",
                   grid: tuple[tuple[int, int, int], float, float] | None = None,
                   supersample: int = 3, geometry: Geometry | None = None,
                   in_plane: int = 1) -> LumbarPhantom:
    """The variant's lumbar spine on an acquisition grid (default: LUMBAR_GRIDS; sagittal
    11 x 4 mm slices of 320 x 320 at 0.75 mm, as lumbar protocols acquire it). Water and fat
    are averaged over `supersample` points across each slice; labels and truth at its centre.
    The coronal slab runs through the vertebral bodies. geometry: the grid's orientation when
    not the plane's usual one (a stack stored upside down, facing the other way, oblique).
    in_plane: points per pixel along each in-plane axis (partial volume within the pixel)."""
    if variant not in LUMBAR_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(LUMBAR_VARIANTS)}, "
                         f"got {variant!r}")
    shape, pixel, thickness = grid or LUMBAR_GRIDS[orientation]
    placed = geometry or geometry_for(orientation)
    segments = column(variant)
    centre = FIELD_CENTRE_MM.copy()
    if orientation == "coronal":
        centre[1] = 8.0
    water, fat, (labels, vertebra, posterior, masks, levels) = sample_grid(
        lambda x, y, z: _sample(x, y, z, variant, segments), placed, (shape, pixel, thickness),
        centre, supersample, in_plane)
    return LumbarPhantom(
        labels=labels, pixel_spacing_mm=(pixel, pixel), slice_thickness_mm=thickness,
        water=water, fat=fat, vertebra=vertebra, posterior=posterior, lesion_masks=masks,
        orientation=orientation,
        level_names={n: s.name for n, s in enumerate(segments, start=1)},
        lesion_levels=levels, variant=variant, geometry=geometry)
