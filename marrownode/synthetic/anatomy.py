"""An anatomical phantom family: a trunk (or a thigh) with known water and fat in every voxel.

Unlike the block phantom, it puts next to the marrow what real MR puts there: subcutaneous fat,
paraspinal and psoas muscle, organs, vertebral bodies framed by signal-void cortex and
endplates, water-rich discs between them, the CSF-filled canal behind them, and the posterior
elements (marrow too, behind the canal). Amplitudes are T1-weighted: fat (short T1) is bright
on in-phase, CSF (long T1) dark, discs darker than marrow. The anatomy is defined in patient
millimetres around the field of view's centre and sampled on a sagittal, coronal or axial grid,
with partial volume across thick slices, so the same body looks right in every plane.

Truth comes with it: tissue labels, the vertebral body and posterior-element masks numbered
cranio-caudally, and the masks of the lesions placed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np

from marrownode.synthetic.geometry import Geometry, geometry_for
from marrownode.synthetic.phantom import Phantom

#: (water, fat) T1-weighted amplitudes per tissue.
ANATOMY_TISSUES: dict[str, tuple[float, float]] = {
    "background": (0.0, 0.0),
    "cortex": (0.0, 0.0),  # cortical bone and endplates: signal void
    "subcutaneous_fat": (0.08, 1.0),
    "muscle": (0.45, 0.03),
    "viscera": (0.50, 0.03),
    "liver": (0.55, 0.04),
    "kidney": (0.60, 0.0),
    "disc": (0.35, 0.0),
    "csf": (0.15, 0.0),
    "marrow": (0.30, 0.55),  # normal adult vertebral marrow: ~65 % fat, loss ~70 %
    "lesion": (0.55, 0.04),  # infiltrative: fat replaced, loss ~14 %
    "fat_lesion": (0.08, 1.0),  # haemangioma / focal fat: brighter than marrow, loss ~15 %
    "replaced_marrow": (0.40, 0.006),  # diffuse replacement: loss ~3 %, darker than muscle
    "yellow_marrow": (0.10, 0.90),  # fatty long-bone marrow
    # the lumbar phantom's (lumbar.py): appended, so the codes above stay
    "vein": (0.40, 0.0),  # basivertebral vein: slow blood, no fat
    "annulus": (0.22, 0.0),  # the disc's fibrous ring: darker than the nucleus
    "modic_1": (0.55, 0.05),  # oedematous band along an endplate: fat replaced, low loss
    "modic_2": (0.12, 0.85),  # fatty band along an endplate: bright, fat-rich
    "aorta": (0.45, 0.0),
    # the whole-spine phantom's (whole_spine.py)
    "cord": (0.40, 0.0),  # spinal cord and brain: T1 grey, no fat
    "lung": (0.02, 0.0),  # aerated lung: almost no signal
}
ANATOMY_CODES = {name: code for code, name in enumerate(ANATOMY_TISSUES)}

#: Variants of the trunk; "thigh" is a field of view with marrow but no spine.
VARIANTS = ("normal", "infiltrative_focus", "fat_focus", "diffuse", "thigh")

VERTEBRA_HEIGHT_MM, DISC_HEIGHT_MM, VERTEBRAE = 26.0, 9.0, 5
BODY_HALF_WIDTH_MM, BODY_HALF_DEPTH_MM, CORTEX_MM = 21.0, 15.0, 2.5
BODY_CENTRE_AP_MM = 35.0  # posterior of the field's centre
CANAL_CENTRE_AP_MM = BODY_CENTRE_AP_MM + BODY_HALF_DEPTH_MM + CORTEX_MM + 10.0
LESION_RADIUS_MM, FAT_LESION_RADIUS_MM = 9.0, 8.0


@dataclass
class AnatomicalPhantom(Phantom):
    """A Phantom whose water and fat come from the anatomy (with partial volume)."""

    water: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fat: np.ndarray = field(default_factory=lambda: np.zeros(0))
    vertebra: np.ndarray = field(default_factory=lambda: np.zeros(0))  # body number, 0 elsewhere
    posterior: np.ndarray = field(default_factory=lambda: np.zeros(0))  # element number
    lesion_masks: dict[str, np.ndarray] = field(default_factory=dict)
    orientation: str = "sagittal"
    zero_filled: bool = False
    #: Where the grid lies when not as geometry_for(orientation) puts it (a stack stored
    #: upside down, facing the other way, oblique): studies are written on it.
    geometry: Geometry | None = None

    def water_fat(self, scale: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
        """Water and fat amplitudes, partial volume included."""
        return self.water * scale, self.fat * scale

    def echoes(self, scale: float = 1000.0, snr: float | None = None,
               seed: int = 0) -> dict[str, np.ndarray]:
        """As Phantom.echoes; a zero-filled phantom has exact zeros outside the body, as
        scanners that mask the background write it."""
        images = super().echoes(scale, snr, seed)
        if self.zero_filled:
            outside = self.labels == ANATOMY_CODES["background"]
            for image in images.values():
                image[outside] = 0.0
        return images

    def truth_mask(self, *tissues: str) -> np.ndarray:
        """Voxels whose centre lies in any of the tissues."""
        mask: np.ndarray = np.isin(self.labels, [ANATOMY_CODES[t] for t in tissues])
        return mask


def _ellipse(a: np.ndarray, b: np.ndarray, ca: float, cb: float, ra: float,
             rb: float) -> np.ndarray:
    inside: np.ndarray = ((a - ca) / ra) ** 2 + ((b - cb) / rb) ** 2 <= 1.0
    return inside


def _levels() -> list[tuple[float, float]]:
    """(top, bottom) S-I of each vertebral body including its endplates, cranial first."""
    total = VERTEBRAE * VERTEBRA_HEIGHT_MM + (VERTEBRAE - 1) * DISC_HEIGHT_MM
    top = total / 2
    levels = []
    for _ in range(VERTEBRAE):
        levels.append((top, top - VERTEBRA_HEIGHT_MM))
        top -= VERTEBRA_HEIGHT_MM + DISC_HEIGHT_MM
    return levels


def _trunk(x: np.ndarray, y: np.ndarray, z: np.ndarray,
           variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue codes, body numbers and posterior-element numbers at points (x L-R, y A-P,
    z S-I, mm from the field's centre)."""
    code = ANATOMY_CODES
    labels = np.full(x.shape, code["background"], dtype=np.int16)
    body = _ellipse(x, y, 0.0, 10.0, 150.0, 110.0)
    labels[body] = code["subcutaneous_fat"]
    labels[_ellipse(x, y, 0.0, 10.0, 135.0, 95.0)] = code["viscera"]
    labels[_ellipse(x, y, -60.0, -20.0, 55.0, 50.0) & (z > -20)] = code["liver"]
    for side in (-1, 1):
        labels[_ellipse(x, y, side * 75.0, 35.0, 22.0, 28.0)] = code["kidney"]
        labels[_ellipse(x, y, side * 32.0, CANAL_CENTRE_AP_MM + 28.0, 24.0, 20.0)] = code["muscle"]
        labels[_ellipse(x, y, side * 40.0, BODY_CENTRE_AP_MM - 2.0, 14.0, 15.0)] = code["muscle"]
    labels[_ellipse(x, y, 0.0, 10.0, 150.0, 110.0) & ~_ellipse(x, y, 0.0, 10.0, 135.0, 95.0)
           ] = code["subcutaneous_fat"]
    vertebra = np.zeros(x.shape, dtype=np.int16)
    posterior = np.zeros(x.shape, dtype=np.int16)
    levels = _levels()
    column = _ellipse(x, y, 0.0, BODY_CENTRE_AP_MM, BODY_HALF_WIDTH_MM, BODY_HALF_DEPTH_MM)
    core = _ellipse(x, y, 0.0, BODY_CENTRE_AP_MM, BODY_HALF_WIDTH_MM - CORTEX_MM,
                    BODY_HALF_DEPTH_MM - CORTEX_MM)
    canal = _ellipse(x, y, 0.0, CANAL_CENTRE_AP_MM, 11.0, 9.0)
    arch = _ellipse(x, y, 0.0, CANAL_CENTRE_AP_MM + 3.0, 22.0, 18.0) & (
        y > BODY_CENTRE_AP_MM + BODY_HALF_DEPTH_MM)
    arch_core = _ellipse(x, y, 0.0, CANAL_CENTRE_AP_MM + 3.0, 22.0 - CORTEX_MM,
                         18.0 - CORTEX_MM) & ~_ellipse(x, y, 0.0, CANAL_CENTRE_AP_MM,
                                                       11.0 + CORTEX_MM, 9.0 + CORTEX_MM) & (
        y > BODY_CENTRE_AP_MM + BODY_HALF_DEPTH_MM + CORTEX_MM)
    spinous = (np.abs(x) <= 5.0) & (y >= CANAL_CENTRE_AP_MM + 18.0) & (
        y <= CANAL_CENTRE_AP_MM + 48.0)
    spinous_core = (np.abs(x) <= 5.0 - CORTEX_MM) & (y >= CANAL_CENTRE_AP_MM + 18.0) & (
        y <= CANAL_CENTRE_AP_MM + 48.0 - CORTEX_MM)
    column_top, column_bottom = levels[0][0] + 30.0, levels[-1][1] - 30.0
    in_column = (z <= column_top) & (z >= column_bottom)
    labels[column & in_column] = code["disc"]  # between the bodies (and beyond, as more discs)
    marrow = code["replaced_marrow"] if variant == "diffuse" else code["marrow"]
    for number, (top, bottom) in enumerate(levels, start=1):
        level = (z <= top) & (z >= bottom)
        inner = (z <= top - CORTEX_MM) & (z >= bottom + CORTEX_MM)
        labels[column & level] = code["cortex"]
        labels[core & inner] = marrow
        vertebra[core & inner] = number
        element_level = (z <= top - 3.0) & (z >= bottom + 3.0)
        element_inner = (z <= top - 3.0 - CORTEX_MM) & (z >= bottom + 3.0 + CORTEX_MM)
        shell = (arch | spinous) & element_level & ~canal
        labels[shell] = code["cortex"]
        element = (arch_core | spinous_core) & element_inner
        labels[element] = marrow
        posterior[element] = number
    labels[canal & in_column] = code["csf"]
    labels[~body] = code["background"]
    return labels, vertebra, posterior


def _thigh(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A thigh: fat, muscle and a femur (cortex around fatty marrow): marrow, but no spine."""
    code = ANATOMY_CODES
    labels = np.full(x.shape, code["background"], dtype=np.int16)
    labels[_ellipse(x, y, 0.0, 0.0, 80.0, 75.0)] = code["subcutaneous_fat"]
    labels[_ellipse(x, y, 0.0, 0.0, 68.0, 63.0)] = code["muscle"]
    labels[_ellipse(x, y, 8.0, 5.0, 15.0, 15.0)] = code["cortex"]
    labels[_ellipse(x, y, 8.0, 5.0, 10.0, 10.0)] = code["yellow_marrow"]
    return labels


def _lesions(x: np.ndarray, y: np.ndarray, z: np.ndarray, labels: np.ndarray,
             variant: str) -> dict[str, np.ndarray]:
    """Place the variant's lesion in a vertebral body; returns its truth mask by name."""
    levels = _levels()
    placed: dict[str, np.ndarray] = {}
    marrow = labels == ANATOMY_CODES["marrow"]
    for name, level, radius, tissue in (
            ("infiltrative_focus", 2, LESION_RADIUS_MM, "lesion"),
            ("fat_focus", 1, FAT_LESION_RADIUS_MM, "fat_lesion")):
        if variant != name:
            continue
        top, bottom = levels[level]
        sphere = (x ** 2 + (y - BODY_CENTRE_AP_MM) ** 2
                  + (z - (top + bottom) / 2) ** 2) <= radius ** 2
        mask = sphere & marrow
        labels[mask] = ANATOMY_CODES[tissue]
        placed[name] = mask
    return placed


def anatomical_phantom(
    variant: str = "normal",
    orientation: str = "sagittal",
    shape: tuple[int, int, int] | None = None,
    pixel_spacing_mm: float = 2.0,
    slice_thickness_mm: float | None = None,
    zero_filled: bool = False,
    supersample: int = 3,
) -> AnatomicalPhantom:
    """The variant's anatomy on an acquisition grid; shape is (slices, rows, columns).

    Defaults: sagittal 14 x 4 mm slices over the column, axial 5 mm slices over the lumbar
    spine, coronal 4 mm slices through the vertebral bodies; 2 mm pixels. Water and fat are
    averaged over `supersample` points across each slice (partial volume); labels and truth
    masks are taken at the slice centre."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    defaults = {"sagittal": ((14, 160, 128), 4.0), "axial": ((40, 128, 160), 5.0),
                "coronal": ((14, 160, 160), 4.0)}
    default_shape, default_thickness = defaults[orientation]
    shape = shape or default_shape
    thickness = slice_thickness_mm or default_thickness
    geometry = geometry_for(orientation)
    centre = (geometry.origin + geometry.normal * thickness * (shape[0] - 1) / 2
              + geometry.col_dir * pixel_spacing_mm * (shape[1] - 1) / 2
              + geometry.row_dir * pixel_spacing_mm * (shape[2] - 1) / 2)
    if orientation == "coronal":  # the slab through the vertebral bodies
        centre = centre - geometry.normal * BODY_CENTRE_AP_MM
    spacing = (pixel_spacing_mm, pixel_spacing_mm)

    def sample(offset_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                          dict[str, np.ndarray]]:
        x, y, z = geometry.patient_grid(shape, spacing, thickness)
        x, y, z = (a - c + geometry.normal[i] * offset_mm
                   for i, (a, c) in enumerate(zip((x, y, z), centre, strict=True)))
        if variant == "thigh":
            labels = _thigh(x, y)
            zeros = np.zeros(shape, dtype=np.int16)
            return labels, zeros, zeros, {}
        labels, vertebra, posterior = _trunk(x, y, z, variant)
        lesions = _lesions(x, y, z, labels, variant)
        return labels, vertebra, posterior, lesions

    table_w = np.array([w for w, _ in ANATOMY_TISSUES.values()])
    table_f = np.array([f for _, f in ANATOMY_TISSUES.values()])
    offsets = (np.arange(supersample) - (supersample - 1) / 2) * thickness / supersample
    water = np.zeros(shape)
    fat = np.zeros(shape)
    for offset in offsets:
        sub_labels = sample(float(offset))[0]
        water += table_w[sub_labels] / supersample
        fat += table_f[sub_labels] / supersample
    labels, vertebra, posterior, lesions = sample(0.0)
    return AnatomicalPhantom(
        labels=labels, pixel_spacing_mm=spacing, slice_thickness_mm=thickness,
        water=water, fat=fat, vertebra=vertebra, posterior=posterior, lesion_masks=lesions,
        orientation=orientation, zero_filled=zero_filled)


#: The default synthetic study's anatomy per plane: (shape, pixel spacing, slice thickness).
DEFAULT_GRIDS: dict[str, tuple[tuple[int, int, int], float, float]] = {
    "sagittal": ((12, 128, 112), 2.5, 4.0),
    "coronal": ((12, 128, 128), 2.5, 4.0),
    "axial": ((30, 112, 128), 2.5, 6.0),
}


@cache
def default_phantom(orientation: str = "sagittal",
                    variant: str = "infiltrative_focus") -> AnatomicalPhantom:
    """The anatomy of the default synthetic study (demo, tests, benchmarks): a lumbar spine
    with one infiltrative focus. Cached: it is deterministic, and callers only read it."""
    shape, pixel_spacing, thickness = DEFAULT_GRIDS[orientation]
    return anatomical_phantom(variant, orientation, shape=shape, pixel_spacing_mm=pixel_spacing,
                              slice_thickness_mm=thickness)


def tissue_truth(tissue: str) -> dict[str, float]:
    """Analytic signal loss %, SIR and fat fraction % of a pure tissue (no partial volume)."""
    water, fat = ANATOMY_TISSUES[tissue]
    in_phase, opposed = water + fat, abs(water - fat)
    return {"signal_loss_percent": 100.0 * (in_phase - opposed) / in_phase,
            "sir": opposed / in_phase, "fat_fraction_percent": 100.0 * fat / in_phase,
            "in_phase": in_phase}
