"""One Dixon set through masks, maps, thresholds and foci: arrays in, arrays and records out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from marrownode.quant.foci import FocusParameters, find_candidates
from marrownode.quant.maps import (
    fat_fraction_two_point,
    fat_fraction_water_fat,
    signal_intensity_ratio,
    signal_loss_percent,
    water_fat_consistency,
)
from marrownode.quant.masks import estimate_noise_sigma, tissue_mask
from marrownode.quant.roi import roi_statistics
from marrownode.quant.thresholds import DEFAULT_THRESHOLDS, select_threshold

#: Median disagreement (relative to median in-phase signal) above which W/F are not trusted.
WATER_FAT_TOLERANCE = 0.10


@dataclass(frozen=True)
class QuantParameters:
    thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS
    field_strength_tolerance_t: float = 0.25
    foci: FocusParameters = FocusParameters()


@dataclass
class QuantResult:
    tissue: np.ndarray
    signal_loss: np.ndarray
    sir: np.ndarray
    fat_fraction: np.ndarray
    fat_fraction_method: str
    noise_sigma: float
    threshold_percent: float | None
    threshold_field_strength_t: float | None
    flags: list[str] = field(default_factory=list)
    foci: list[dict[str, Any]] = field(default_factory=list)
    focus_masks: list[np.ndarray] = field(default_factory=list)
    water_fat_check: dict[str, float] | None = None
    tissue_statistics: dict[str, Any] | None = None


def analyse_set(
    in_phase: np.ndarray,
    opposed: np.ndarray,
    spacing_mm: tuple[float, float, float],
    field_strength_t: float | None,
    water: np.ndarray | None = None,
    fat: np.ndarray | None = None,
    parameters: QuantParameters = QuantParameters(),
) -> QuantResult:
    """Maps and foci for aligned (slice, row, column) volumes with spacing (slice, row, col)."""
    ip = np.asarray(in_phase, dtype=np.float32)
    op = np.asarray(opposed, dtype=np.float32)
    if ip.shape != op.shape:
        raise ValueError(f"in-phase {ip.shape} and opposed-phase {op.shape} differ in shape")
    sigma = estimate_noise_sigma(ip)
    tissue = tissue_mask(ip, sigma)
    flags: list[str] = []
    loss = signal_loss_percent(ip, op, tissue)
    sir = signal_intensity_ratio(ip, op, tissue)
    check = None
    if water is not None and fat is not None:
        fat_fraction = fat_fraction_water_fat(water, fat, tissue)
        method = "water_fat"
        check = water_fat_consistency(ip, op, water, fat, tissue)
        if not (check["sum_error"] <= WATER_FAT_TOLERANCE
                and check["difference_error"] <= WATER_FAT_TOLERANCE):
            flags.append("water_fat_swap_suspected")
    else:
        fat_fraction = fat_fraction_two_point(ip, op, tissue)
        method = "two_point_water_dominant"
        flags.append("fat_fraction_ambiguous_above_50")
    choice = select_threshold(
        field_strength_t, parameters.thresholds, parameters.field_strength_tolerance_t
    )
    if choice.flag:
        flags.append(choice.flag)
    result = QuantResult(
        tissue=tissue, signal_loss=loss, sir=sir, fat_fraction=fat_fraction,
        fat_fraction_method=method, noise_sigma=sigma, threshold_percent=choice.threshold_percent,
        threshold_field_strength_t=choice.field_strength_t, flags=flags, water_fat_check=check,
    )
    maps = {"signal_loss_percent": loss, "sir": sir, "fat_fraction_percent": fat_fraction}
    voxel_volume = float(np.prod(spacing_mm))
    result.tissue_statistics = roi_statistics(tissue, maps, ip, op, voxel_volume)
    if choice.threshold_percent is None:
        return result
    candidates = find_candidates(loss, tissue, choice.threshold_percent, spacing_mm,
                                 parameters.foci)
    for candidate in candidates:
        stats = roi_statistics(candidate.mask, maps, ip, op, voxel_volume)
        result.foci.append(focus_record(candidate.mask, stats, spacing_mm,
                                        choice.threshold_percent, candidate.shell_marrow_fraction))
        result.focus_masks.append(candidate.mask)
    order = sorted(range(len(result.foci)), key=lambda i: -result.foci[i]["volume_mm3"])
    result.foci = [result.foci[i] for i in order]
    result.focus_masks = [result.focus_masks[i] for i in order]
    return result


def focus_record(
    mask: np.ndarray,
    stats: dict[str, Any],
    spacing_mm: tuple[float, float, float],
    threshold_percent: float,
    shell_marrow_fraction: float,
) -> dict[str, Any]:
    """The report.json entry of one focus."""
    per_slice = mask.sum(axis=(1, 2))
    slices = np.flatnonzero(per_slice)
    pixel_area = spacing_mm[1] * spacing_mm[2]
    centroid = np.argwhere(mask).mean(axis=0)
    loss = stats["signal_loss_ratio_of_means_percent"]
    return {
        "slice_count": int(slices.size),
        "slice_indices": [int(s) for s in slices],
        "area_mm2": float(per_slice.max() * pixel_area),
        "volume_mm3": float(stats["volume_mm3"]),
        "voxel_count": int(stats["voxel_count"]),
        "centroid_voxel": [round(float(c), 2) for c in centroid],
        "signal_loss_percent": float(loss),
        "signal_loss_voxel_mean_percent": stats["maps"]["signal_loss_percent"]["mean"],
        "sir": float(stats["sir_ratio_of_means"]),
        "fat_fraction_percent": stats["maps"]["fat_fraction_percent"]["mean"],
        "below_threshold": bool(loss < threshold_percent),
        "shell_marrow_fraction": round(shell_marrow_fraction, 3),
    }
