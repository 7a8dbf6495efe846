"""How a stored slice is turned to be read, as viewers hang images: superior up on sagittal
and coronal slices (anterior up on axial ones); anterior on the viewer's left on sagittal
slices, the patient's right on the viewer's left on coronal and axial ones. A scanner may store
a sagittal stack upside down or facing the other way (ImageOrientationPatient says so); a
picture made from it (the summary page) is turned back and labelled at its edges, so the
radiologist never reads a spine with the sacrum at the top."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from marrownode.quant.geometry import (
    ANTERIOR_POSTERIOR,
    LEFT_RIGHT,
    SUPERIOR_INFERIOR,
    VolumeGeometry,
)

#: Per plane: the patient axis and sign the display's rows run along (downward), and its
#: columns (rightward), in LPS: -z is inferior, +y posterior, +x the patient's left.
_HUNG = {"sagittal": ((SUPERIOR_INFERIOR, -1.0), (ANTERIOR_POSTERIOR, 1.0)),
         "coronal": ((SUPERIOR_INFERIOR, -1.0), (LEFT_RIGHT, 1.0)),
         "axial": ((ANTERIOR_POSTERIOR, 1.0), (LEFT_RIGHT, 1.0))}
#: The letter of a patient direction, by axis, for its + and - senses (LPS).
_LETTERS = {LEFT_RIGHT: ("L", "R"), ANTERIOR_POSTERIOR: ("P", "A"), SUPERIOR_INFERIOR: ("S", "I")}


def _letter(direction: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(direction)))
    plus, minus = _LETTERS[axis]
    return plus if direction[axis] >= 0 else minus


@dataclass(frozen=True)
class DisplayView:
    """transpose: the stored rows run across the display; then flip_rows, flip_columns.
    edges: the patient directions at the displayed slice's top, bottom, left and right."""

    transpose: bool
    flip_rows: bool
    flip_columns: bool
    edges: tuple[str, str, str, str]

    @classmethod
    def of(cls, geometry: VolumeGeometry) -> DisplayView:
        """The turn that hangs a slice of this geometry as viewers do."""
        (down_axis, down_sign), (across_axis, across_sign) = _HUNG[geometry.plane()]
        rows = np.asarray(geometry.row_direction, dtype=float)
        columns = np.asarray(geometry.column_direction, dtype=float)
        transpose = abs(columns[down_axis]) > abs(rows[down_axis])
        vertical, horizontal = (columns, rows) if transpose else (rows, columns)
        flip_rows = bool(vertical[down_axis] * down_sign < 0)
        flip_columns = bool(horizontal[across_axis] * across_sign < 0)
        down = -vertical if flip_rows else vertical
        right = -horizontal if flip_columns else horizontal
        return cls(transpose, flip_rows, flip_columns,
                   (_letter(-down), _letter(down), _letter(-right), _letter(right)))

    def plane(self, stored: np.ndarray) -> np.ndarray:
        """A stored (row, column, ...) slice as displayed (a view, not a copy)."""
        shown = np.swapaxes(stored, 0, 1) if self.transpose else stored
        if self.flip_rows:
            shown = shown[::-1]
        if self.flip_columns:
            shown = shown[:, ::-1]
        return shown

    def point(self, row: float, column: float,
              stored_shape: tuple[int, ...]) -> tuple[float, float]:
        """A stored slice's (row, column) position on the displayed slice."""
        rows, columns = stored_shape[0], stored_shape[1]
        if self.transpose:
            row, column, rows, columns = column, row, columns, rows
        if self.flip_rows:
            row = rows - 1 - row
        if self.flip_columns:
            column = columns - 1 - column
        return row, column

    def spacing(self, pixel_spacing_mm: tuple[float, float]) -> tuple[float, float]:
        """(row, column) spacing of the displayed slice."""
        return (pixel_spacing_mm[1], pixel_spacing_mm[0]) if self.transpose \
            else pixel_spacing_mm
