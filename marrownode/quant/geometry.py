"""Where a (slice, row, column) volume sits in the patient: enough to tell cranial from caudal,
anterior from posterior, and to report positions in DICOM patient coordinates (LPS, mm)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Patient axes in LPS order.
LEFT_RIGHT, ANTERIOR_POSTERIOR, SUPERIOR_INFERIOR = 0, 1, 2


@dataclass(frozen=True)
class VolumeGeometry:
    """origin: patient position of voxel (0, 0, 0); directions: unit vectors (LPS) along which
    the slice, row and column indices increase; spacing: mm between slices, rows, columns."""

    origin: tuple[float, float, float]
    slice_direction: tuple[float, float, float]
    row_direction: tuple[float, float, float]  # increasing row index (DICOM column cosines)
    column_direction: tuple[float, float, float]  # increasing column index (row cosines)
    spacing_mm: tuple[float, float, float]

    @classmethod
    def identity(cls, spacing_mm: tuple[float, float, float]) -> VolumeGeometry:
        """A sagittal-like default for callers without geometry: slices L-R, rows feet-ward,
        columns posterior."""
        return cls((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0),
                   spacing_mm)

    def to_patient(self, index: np.ndarray) -> np.ndarray:
        """Patient coordinates (..., 3) of fractional voxel indices (..., 3)."""
        index = np.asarray(index, dtype=np.float64)
        directions = np.array([self.slice_direction, self.row_direction,
                               self.column_direction]) * np.array(self.spacing_mm)[:, None]
        result: np.ndarray = np.asarray(self.origin) + index @ directions
        return result

    def patient_coordinate(self, patient_axis: int, shape: tuple[int, ...]) -> np.ndarray:
        """One patient coordinate (mm) of every voxel of a volume of shape, as float32 that
        broadcasts to shape: an axis along which the coordinate does not change has length 1
        (on a sagittal stack each coordinate is a line, not a volume of 5 million values)."""
        directions = (self.slice_direction, self.row_direction, self.column_direction)
        total = np.full((1, 1, 1), self.origin[patient_axis], dtype=np.float32)
        for axis, (direction, spacing) in enumerate(zip(directions, self.spacing_mm,
                                                        strict=True)):
            step = direction[patient_axis] * spacing
            if step:
                line = (np.arange(shape[axis], dtype=np.float32) * step).reshape(
                    [-1 if a == axis else 1 for a in range(3)])
                # what total += line did on the whole volume: the sum in the wider type,
                # kept as float32, axis after axis
                total = (total + line).astype(np.float32, copy=False)
        return total

    def voxel_axis(self, patient_axis: int) -> tuple[int, float]:
        """The volume axis best aligned with a patient axis, and +1/-1: whether the patient
        coordinate grows with that index."""
        directions = np.array([self.slice_direction, self.row_direction,
                               self.column_direction])
        axis = int(np.argmax(np.abs(directions[:, patient_axis])))
        return axis, float(np.sign(directions[axis, patient_axis]) or 1.0)

    def plane(self) -> str:
        """sagittal / coronal / axial from the slice direction."""
        axis = int(np.argmax(np.abs(self.slice_direction)))
        return ("sagittal", "coronal", "axial")[axis]
