"""Foci: regions of localised vertebral marrow with too little signal loss, and what they are.

Only voxels the localiser called marrow can be part of a focus, so discs, the canal, muscle and
fat never are. Each focus gets a category:
- fat_containing: brighter on in-phase than the marrow around it, or more than 50 % fat where
  water/fat separation or a scanner PDFF map says so (haemangioma, focal fat: not worrying);
- indeterminate: an in-phase-first pair whose loss lies within the T2* margin of the threshold
  (decay between the echoes inflates the loss by about that much);
- low_signal_loss: the rest (fat not demonstrated: worrying, not specific).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from marrownode import defaults
from marrownode.quant.roi import roi_statistics
from marrownode.vocabulary import FocusCategory


@dataclass(frozen=True)
class FocusParameters:
    """Size limits of a focus and the T2* margin of in-phase-first pairs."""

    min_volume_mm3: float = defaults.MIN_FOCUS_VOLUME_MM3
    min_voxels: int = 3
    #: A region holding more than this share of its vertebra is diffuse, not a focus.
    max_vertebra_fraction: float = 0.5
    #: In-phase-first pairs overstate the loss by about this many points (docs/domain.md §2).
    in_phase_first_margin_percent: float = defaults.IN_PHASE_FIRST_MARGIN_PERCENT
    #: In-phase brighter than the surrounding marrow by this factor: fat-containing.
    fat_brighter_factor: float = 1.05
    #: Margin sharpness (0-1) from which a margin counts as sharp.
    sharp_margin: float = 0.5


@dataclass
class Focus:
    """One focus with its ROI statistics, position and category."""

    mask: np.ndarray
    vertebra: int
    statistics: dict[str, object]
    category: FocusCategory
    margin_sharpness: float | None
    in_phase_to_marrow_ratio: float | None

    @property
    def signal_loss_percent(self) -> float:
        """Ratio of ROI means, as a radiologist measures it."""
        return float(self.statistics["signal_loss_ratio_of_means_percent"])  # type: ignore[arg-type]


def _ring(mask: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Voxels between inner and outer in-plane dilations of mask."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    grown_outer = ndimage.binary_dilation(mask, structure=structure, iterations=outer)
    grown_inner = (ndimage.binary_dilation(mask, structure=structure, iterations=inner)
                   if inner > 0 else mask)
    ring: np.ndarray = grown_outer & ~grown_inner
    return ring


def margin_sharpness(mask: np.ndarray, loss: np.ndarray, marrow: np.ndarray) -> float | None:
    """How much of the lesion-to-marrow contrast is reached within two voxels outside the
    border (0-1): near 1 a sharply marginated focus, lower for one that fades into the marrow
    over several voxels. Read
    on the focus's largest section, as a radiologist would (its ends suffer most from partial
    volume across the slice); the border voxels themselves are left out."""
    largest = int(np.argmax(mask.sum(axis=(1, 2))))
    keep = np.zeros(mask.shape[0], dtype=bool)
    keep[largest] = True
    mask = mask & keep[:, None, None]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure)
    core = eroded if eroded.any() else mask
    regions = (core, _ring(mask, 1, 2) & marrow, _ring(mask, 3, 5) & marrow)
    values = [loss[region][np.isfinite(loss[region])] for region in regions]
    if any(v.size == 0 for v in values):
        return None
    core_loss, outer_loss, far_loss = (float(np.median(v)) for v in values)
    total = far_loss - core_loss
    if total <= 0:
        return None
    return float(np.clip((outer_loss - core_loss) / total, 0.0, 1.0))


def find_foci(
    loss: np.ndarray,
    maps: dict[str, np.ndarray],
    in_phase: np.ndarray,
    opposed: np.ndarray,
    vertebrae: np.ndarray,
    threshold_percent: float,
    voxel_volume_mm3: float,
    in_phase_first: bool,
    fat_fraction_unambiguous: bool,
    skip_vertebrae: set[int],
    parameters: FocusParameters = FocusParameters(),
) -> list[Focus]:
    """Connected low-loss regions inside the numbered marrow (vertebrae: bodies and posterior
    elements with their vertebra's number), largest first."""
    marrow = vertebrae > 0
    margin = parameters.in_phase_first_margin_percent if in_phase_first else 0.0
    # Segment on an in-plane median of the loss, measure the raw images on the result: voxels
    # picked by their own noisy loss would bias every focus low.
    smooth = ndimage.median_filter(np.where(marrow, np.nan_to_num(loss, nan=100.0), 100.0),
                                   size=(1, 3, 3))
    low = marrow & np.isfinite(loss) & (smooth < threshold_percent + margin)
    labels, _ = ndimage.label(low)
    foci: list[Focus] = []
    for region_label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels == region_label
        count = int(mask.sum())
        if count < parameters.min_voxels or count * voxel_volume_mm3 < parameters.min_volume_mm3:
            continue
        vertebra = int(np.bincount(vertebrae[mask]).argmax())
        if vertebra in skip_vertebrae or count > parameters.max_vertebra_fraction * int(
                (vertebrae == vertebra).sum()):
            continue
        mask = mask | (ndimage.binary_fill_holes(mask) & marrow)
        statistics = roi_statistics(mask, maps, in_phase, opposed, voxel_volume_mm3)
        surround = _ring(mask, 1, 4) & (vertebrae == vertebra) & ~low
        surround_ip = float(np.median(in_phase[surround])) if surround.any() else float("nan")
        ip_ratio = (float(statistics["in_phase_mean"]) / surround_ip
                    if np.isfinite(surround_ip) and surround_ip > 0 else None)
        fat_mean = statistics["maps"]["fat_fraction_percent"]["mean"]
        focus_loss = float(statistics["signal_loss_ratio_of_means_percent"])
        if (ip_ratio is not None and ip_ratio > parameters.fat_brighter_factor) or (
                fat_fraction_unambiguous and fat_mean > 50.0):
            category = FocusCategory.FAT_CONTAINING
        elif in_phase_first and abs(focus_loss - threshold_percent) < margin:
            category = FocusCategory.INDETERMINATE
        elif focus_loss >= threshold_percent:
            continue  # a region that only the margin let in, and not near the threshold
        else:
            category = FocusCategory.LOW_SIGNAL_LOSS
        foci.append(Focus(mask, vertebra, statistics, category,
                          margin_sharpness(mask, loss, marrow), ip_ratio))
    foci.sort(key=lambda f: -int(f.mask.sum()))
    return foci
