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

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from marrownode.synthetic.anatomy import ANATOMY_CODES, ANATOMY_TISSUES, AnatomicalPhantom
from marrownode.synthetic.geometry import Geometry, geometry_for

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
                centre: np.ndarray, supersample: int) -> tuple[np.ndarray, np.ndarray, SampledT]:
    """Water and fat on an acquisition grid centred on `centre` (patient mm), averaged over
    `supersample` points across each slice (partial volume); and the sample (tissue codes
    first, then the truth) at the slices' centres."""
    shape, pixel, thickness = grid
    grid_centre = (geometry.origin + geometry.normal * thickness * (shape[0] - 1) / 2
                   + geometry.col_dir * pixel * (shape[1] - 1) / 2
                   + geometry.row_dir * pixel * (shape[2] - 1) / 2)
    table_w = np.array([w for w, _ in ANATOMY_TISSUES.values()])
    table_f = np.array([f for _, f in ANATOMY_TISSUES.values()])

    def points(offset: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, z = geometry.patient_grid(shape, (pixel, pixel), thickness)
        x, y, z = (a - grid_centre[i] + centre[i] + geometry.normal[i] * offset
                   for i, a in enumerate((x, y, z)))
        return x, y, z

    water = np.zeros(shape)
    fat = np.zeros(shape)
    for offset in (np.arange(supersample) - (supersample - 1) / 2) * thickness / supersample:
        labels = sample(*points(float(offset)))[0]
        water += table_w[labels] / supersample
        fat += table_f[labels] / supersample
    return water, fat, sample(*points(0.0))


def lumbar_phantom(variant: str = "normal", orientation: str = "sagittal",
                   grid: tuple[tuple[int, int, int], float, float] | None = None,
                   supersample: int = 3) -> LumbarPhantom:
    """The variant's lumbar spine on an acquisition grid (default: LUMBAR_GRIDS; sagittal
    11 x 4 mm slices of 320 x 320 at 0.75 mm, as lumbar protocols acquire it). Water and fat
    are averaged over `supersample` points across each slice; labels and truth at its centre.
    The coronal slab runs through the vertebral bodies."""
    if variant not in LUMBAR_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(LUMBAR_VARIANTS)}, "
                         f"got {variant!r}")
    shape, pixel, thickness = grid or LUMBAR_GRIDS[orientation]
    geometry = geometry_for(orientation)
    segments = column(variant)
    centre = FIELD_CENTRE_MM.copy()
    if orientation == "coronal":
        centre[1] = 8.0
    water, fat, (labels, vertebra, posterior, masks, levels) = sample_grid(
        lambda x, y, z: _sample(x, y, z, variant, segments), geometry, (shape, pixel, thickness),
        centre, supersample)
    return LumbarPhantom(
        labels=labels, pixel_spacing_mm=(pixel, pixel), slice_thickness_mm=thickness,
        water=water, fat=fat, vertebra=vertebra, posterior=posterior, lesion_masks=masks,
        orientation=orientation,
        level_names={n: s.name for n, s in enumerate(segments, start=1)},
        lesion_levels=levels, variant=variant)
