"""Where synthetic slices sit in patient space (LPS, mm), for each acquisition plane."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Geometry:
    """Direction of increasing column (row_dir) and row (col_dir) index, as DICOM's
    ImageOrientationPatient, and the first slice's top-left pixel centre."""

    row_dir: np.ndarray
    col_dir: np.ndarray
    origin: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        """Direction of increasing slice index."""
        normal: np.ndarray = np.cross(self.row_dir, self.col_dir)
        return normal

    def patient_grid(self, shape: tuple[int, int, int], pixel_spacing_mm: tuple[float, float],
                     slice_spacing_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient x, y, z (mm) of every voxel centre of a (slice, row, column) volume."""
        k, r, c = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
        axes = (k * slice_spacing_mm, r * pixel_spacing_mm[0], c * pixel_spacing_mm[1])
        x, y, z = (self.origin[i] + self.normal[i] * axes[0] + self.col_dir[i] * axes[1]
                   + self.row_dir[i] * axes[2] for i in range(3))
        return x, y, z


def geometry_for(orientation: str) -> Geometry:
    """The plane's orientation with a fixed origin (sagittal, coronal or axial)."""
    if orientation == "sagittal":
        return Geometry(np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0]),
                        np.array([-30.0, -100.0, 120.0]))
    if orientation == "coronal":
        return Geometry(np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0]),
                        np.array([-100.0, -40.0, 120.0]))
    if orientation == "axial":
        return Geometry(np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]),
                        np.array([-100.0, -100.0, 40.0]))
    raise ValueError(f"orientation must be sagittal, coronal or axial, got {orientation!r}")
