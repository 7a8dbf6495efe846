"""The T1 internal standards: normal marrow is brighter than disc and muscle on T1-weighted
(in-phase) images; marrow that is not has lost its fat (the seed's diffuse pattern)."""

from __future__ import annotations

import numpy as np

from marrownode.quant.geometry import (
    ANTERIOR_POSTERIOR,
    LEFT_RIGHT,
    SUPERIOR_INFERIOR,
    VolumeGeometry,
)
from marrownode.quant.localisation import Localisation, SpineParameters
from marrownode.quant.masks import box_around, square_dilated, voxel_indices


def t1_internal_standards(ip: np.ndarray, loss: np.ndarray, tissue: np.ndarray,
                        localisation: Localisation, geometry: VolumeGeometry,
                        parameters: SpineParameters,
                        signal_level: float) -> tuple[float | None, float | None]:
    """Median in-phase signal of paraspinal muscle (behind the column) and of the discs
    (between the bodies): the T1 internal standards."""
    bodies = localisation.bodies
    marrow = localisation.marrow.copy()
    box = box_around(marrow, (0, 2, 2))  # the 1 x 5 x 5 dilation's reach
    if box is not None:
        marrow[box] = square_dilated(marrow[box], 2)
    fat_level = parameters.fat_relative_signal * signal_level
    void_level = parameters.void_relative_signal * signal_level
    water_rich = (tissue & ~marrow & np.isfinite(loss)
                  & (loss < parameters.water_rich_max_loss_percent)
                  & (ip < fat_level) & (ip > void_level))
    column = geometry.to_patient(voxel_indices(bodies > 0))
    back = float(column[:, ANTERIOR_POSTERIOR].max())
    lr = float(np.median(column[:, LEFT_RIGHT]))
    top, bottom = (float(column[:, SUPERIOR_INFERIOR].max()),
                   float(column[:, SUPERIOR_INFERIOR].min()))
    behind = geometry.patient_coordinate(ANTERIOR_POSTERIOR, ip.shape) - back
    muscle = water_rich & (behind > 15.0) & (behind < 90.0)
    del behind
    muscle &= np.abs(geometry.patient_coordinate(LEFT_RIGHT, ip.shape) - lr) < 70.0
    height = geometry.patient_coordinate(SUPERIOR_INFERIOR, ip.shape)
    muscle &= (height <= top) & (height >= bottom)
    axis, _ = geometry.voxel_axis(SUPERIOR_INFERIOR)
    footprint = np.expand_dims((bodies > 0).any(axis=axis), axis)
    between = np.zeros(ip.shape, dtype=bool)
    present = np.flatnonzero((bodies > 0).any(axis=tuple(a for a in range(3) if a != axis)))
    occupied = set(present.tolist())
    gap = [i for i in range(int(present.min()), int(present.max()) + 1) if i not in occupied]
    if gap:
        between.swapaxes(0, axis)[gap] = True
    disc = water_rich & footprint & between
    muscle_ip = float(np.median(ip[muscle])) if muscle.sum() >= 20 else None
    disc_ip = float(np.median(ip[disc])) if disc.sum() >= 10 else None
    return muscle_ip, disc_ip
