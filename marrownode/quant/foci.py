"""Foci: 3-D regions with too little signal loss inside marrow-like surroundings.

A candidate is a connected region of tissue whose signal loss is below the threshold. It becomes
a focus only when the shell around it is mostly mixed fat/water tissue (marrow), which tells a
low-fat lesion inside a vertebral body from muscle (surrounded by fat), intervertebral discs
(marrow only above and below) and background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class FocusParameters:
    min_volume_mm3: float = 50.0
    shell_mm: float = 3.0
    shell_marrow_fraction: float = 0.8
    #: Mixed fat/water tissue shows at least this loss (two-point fat fraction >= 15 %);
    #: nearly pure fat (subcutaneous) and nearly pure water (muscle, discs) show less.
    mixed_tissue_min_signal_loss_percent: float = 30.0


@dataclass(frozen=True)
class Candidate:
    mask: np.ndarray  # full-volume boolean mask of the focus
    shell_marrow_fraction: float


def find_candidates(
    signal_loss: np.ndarray,
    tissue: np.ndarray,
    threshold_percent: float,
    spacing_mm: tuple[float, float, float],
    parameters: FocusParameters = FocusParameters(),
) -> list[Candidate]:
    """Connected low-loss regions above the minimum size whose shell is mostly marrow."""
    finite = np.isfinite(signal_loss)
    low = tissue & finite & (signal_loss < threshold_percent)
    marrow_like = tissue & finite & (
        signal_loss >= max(parameters.mixed_tissue_min_signal_loss_percent, threshold_percent)
    )
    labels, count = ndimage.label(low, structure=ndimage.generate_binary_structure(3, 1))
    if count == 0:
        return []
    voxel_volume = float(np.prod(spacing_mm))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    min_voxels = parameters.min_volume_mm3 / voxel_volume
    # The shell is a box of shell_mm around the region (>= 1 voxel per axis): a separable
    # maximum filter, cheap even for the large muscle candidates that it will reject.
    size = tuple(2 * max(1, int(round(parameters.shell_mm / s))) + 1 for s in spacing_mm)
    pad = [n // 2 for n in size]
    found: list[Candidate] = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or sizes[label] < max(min_voxels, 1):
            continue
        grown = tuple(
            slice(max(b.start - p, 0), min(b.stop + p, n))
            for b, p, n in zip(box, pad, labels.shape, strict=True)
        )
        region = labels[grown] == label
        shell = ndimage.maximum_filter(region.view(np.uint8), size=size).view(bool) & ~region
        shell_size = int(shell.sum())
        if shell_size == 0:
            continue
        fraction = float(marrow_like[grown][shell].sum()) / shell_size
        if fraction < parameters.shell_marrow_fraction:
            continue
        # Noise pushes single voxels of a lesion over the threshold; they are still lesion.
        mask = np.zeros(labels.shape, dtype=bool)
        mask[grown] = ndimage.binary_fill_holes(region)
        found.append(Candidate(mask, fraction))
    return found
