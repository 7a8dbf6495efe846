"""Another series onto the Dixon grid by patient coordinates (pure numpy/scipy).

Both grids are DICOM volumes in one frame of reference: voxel index -> patient position is
origin + index x (direction x spacing) for each. The Dixon voxel's centre is found in the other
series' index space and its value interpolated linearly between the neighbouring voxel centres
(slices included: a 4 mm STIR between two 3 mm Dixon slices is read where the Dixon slice
lies). Outside the other series' slab the value is NaN: not measured, never extrapolated."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from marrownode.quant.geometry import VolumeGeometry


def _axes(geometry: VolumeGeometry) -> np.ndarray:
    """3 x 3: column i is the patient step (mm) of one voxel along index axis i."""
    directions = np.array([geometry.slice_direction, geometry.row_direction,
                           geometry.column_direction], dtype=np.float64)
    axes: np.ndarray = (directions * np.array(geometry.spacing_mm)[:, None]).T
    return axes


def resample_onto(values: np.ndarray, source: VolumeGeometry, target: VolumeGeometry,
                  target_shape: tuple[int, int, int]) -> np.ndarray:
    """values (on source's grid, two slices or more) at the centres of target's voxels; NaN
    outside the source."""
    source_axes = _axes(source)
    inverse = np.linalg.inv(source_axes)
    matrix = inverse @ _axes(target)
    offset = inverse @ (np.asarray(target.origin, dtype=np.float64)
                        - np.asarray(source.origin, dtype=np.float64))
    data = np.asarray(values, dtype=np.float32)
    inside = ndimage.affine_transform(np.ones(data.shape, dtype=np.float32), matrix, offset,
                                      output_shape=target_shape, order=1, mode="constant",
                                      cval=0.0)
    result: np.ndarray = ndimage.affine_transform(data, matrix, offset,
                                                  output_shape=target_shape, order=1,
                                                  mode="nearest")
    result[inside < 0.999] = np.nan  # at least partly outside the source's voxel centres
    return result
