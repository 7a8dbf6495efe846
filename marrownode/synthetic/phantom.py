"""A numerical spine phantom with known water and fat in every voxel (pure numpy).

Tissues carry analytic truth: in-phase = W + F, opposed-phase = |W - F|, so signal loss, SIR and
fat fraction are known exactly. The demo, the tests and the benchmarks all use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: (water, fat) proton densities per tissue; fat fraction = F / (W + F).
TISSUES: dict[str, tuple[float, float]] = {
    "background": (0.0, 0.0),
    "muscle": (0.95, 0.05),
    "subcutaneous_fat": (0.10, 0.90),
    "marrow": (0.35, 0.65),
    "disc": (1.0, 0.0),
    "lesion": (0.93, 0.07),
}
TISSUE_CODES = {name: code for code, name in enumerate(TISSUES)}


def truth(tissue: str) -> dict[str, float]:
    """Analytic signal loss %, SIR and fat fraction % of a tissue (single-peak fat)."""
    water, fat = TISSUES[tissue]
    in_phase, opposed = water + fat, abs(water - fat)
    return {
        "signal_loss_percent": 100.0 * (in_phase - opposed) / in_phase,
        "sir": opposed / in_phase,
        "fat_fraction_percent": 100.0 * fat / in_phase,
    }


@dataclass
class Phantom:
    """Label volume (slices, rows, cols) plus spacing; maps derived from the tissue table."""

    labels: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    lesion_centres: list[tuple[int, int, int]] = field(default_factory=list)

    def water_fat(self, scale: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
        water_table = np.array([w for w, _ in TISSUES.values()]) * scale
        fat_table = np.array([f for _, f in TISSUES.values()]) * scale
        return water_table[self.labels], fat_table[self.labels]

    def echoes(
        self, scale: float = 1000.0, snr: float | None = None, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """Magnitude in-phase, opposed-phase, water and fat images, with Rician noise if snr."""
        water, fat = self.water_fat(scale)
        images = {
            "in_phase": water + fat,
            "opposed_phase": np.abs(water - fat),
            "water": water,
            "fat": fat,
        }
        if snr is None:
            return images
        rng = np.random.default_rng(seed)
        sigma = scale / snr
        noisy = {}
        for name, image in images.items():
            real = image + rng.normal(0.0, sigma, image.shape)
            imaginary = rng.normal(0.0, sigma, image.shape)
            noisy[name] = np.hypot(real, imaginary)
        return noisy


def spine_phantom(
    slices: int = 12,
    rows: int = 128,
    cols: int = 96,
    pixel_spacing_mm: float = 2.0,
    slice_thickness_mm: float = 4.0,
    lesion: bool = True,
) -> Phantom:
    """A sagittal lumbar-spine-like phantom: body of muscle in subcutaneous fat, a column of
    vertebral bodies (marrow) separated by discs, and one low-fat lesion inside a vertebra.

    Volume axes are (slice, row, column); rows run head to feet, columns front to back.
    """
    labels = np.zeros((slices, rows, cols), dtype=np.int16)
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    body = ((c - cols / 2) / (cols * 0.42)) ** 2 + ((r - rows / 2) / (rows * 0.45)) ** 2 <= 1.0
    inner = ((c - cols / 2) / (cols * 0.36)) ** 2 + ((r - rows / 2) / (rows * 0.42)) ** 2 <= 1.0
    plane = np.where(body, TISSUE_CODES["subcutaneous_fat"], TISSUE_CODES["background"])
    plane = np.where(inner, TISSUE_CODES["muscle"], plane)

    column_left, column_right = int(cols * 0.25), int(cols * 0.55)
    top, bottom = int(rows * 0.12), int(rows * 0.88)
    vertebra_mm, disc_mm = 28.0, 8.0
    vertebra_px = max(round(vertebra_mm / pixel_spacing_mm), 4)
    disc_px = max(round(disc_mm / pixel_spacing_mm), 2)
    vertebra_rows: list[tuple[int, int]] = []
    row = top
    while row + vertebra_px <= bottom:
        vertebra_rows.append((row, row + vertebra_px))
        row += vertebra_px
        if row + disc_px + vertebra_px > bottom:
            break
        plane[row : row + disc_px, column_left:column_right] = TISSUE_CODES["disc"]
        row += disc_px
    for start, stop in vertebra_rows:
        plane[start:stop, column_left:column_right] = TISSUE_CODES["marrow"]

    # The column is as wide (left-right) as a vertebral body; outside it, muscle/fat planes.
    first, last = int(slices * 0.15), int(np.ceil(slices * 0.85))
    outer_plane = np.where(inner, TISSUE_CODES["muscle"], np.where(body, 2, 0)).astype(np.int16)
    for k in range(slices):
        labels[k] = plane if first <= k < last else outer_plane

    centres: list[tuple[int, int, int]] = []
    if lesion and vertebra_rows:
        start, stop = vertebra_rows[len(vertebra_rows) // 2]
        centre = (slices // 2, (start + stop) // 2, (column_left + column_right) // 2)
        radius_mm = min(9.0, (stop - start) * pixel_spacing_mm / 3)
        kk, rr, cc = np.ogrid[:slices, :rows, :cols]
        sphere = (
            ((kk - centre[0]) * slice_thickness_mm) ** 2
            + ((rr - centre[1]) * pixel_spacing_mm) ** 2
            + ((cc - centre[2]) * pixel_spacing_mm) ** 2
        ) <= radius_mm**2
        labels[sphere & (labels == TISSUE_CODES["marrow"])] = TISSUE_CODES["lesion"]
        centres.append(centre)
    return Phantom(labels, (pixel_spacing_mm, pixel_spacing_mm), slice_thickness_mm, centres)
