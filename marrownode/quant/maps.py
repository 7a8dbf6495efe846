"""Signal loss, SIR and fat-fraction maps; undefined (NaN) outside tissue."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Maps are float32: ample for percentages, half the memory of float64 on whole-body sets.
MAP_DTYPE = np.float32

#: Robust summaries (medians) over whole volumes use at most this many voxels.
SUMMARY_SAMPLE = 200_000


def finite_or_zero(volume: np.ndarray) -> np.ndarray:
    """np.nan_to_num(volume), for reading only: the volume itself when every value is finite
    (decoded images always are), so each step's copy and three scans are one scan."""
    array = np.asarray(volume)
    return array if np.isfinite(array).all() else np.nan_to_num(array)


def subsample(values: np.ndarray) -> np.ndarray:
    """A regular subsample, so medians of a whole-body volume cost milliseconds."""
    step = max(1, values.size // SUMMARY_SAMPLE)
    return values[::step]


def _ratio(numerator: np.ndarray, denominator: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """numerator / denominator where mask and the denominator is positive; NaN elsewhere."""
    numerator = np.asarray(numerator, dtype=MAP_DTYPE)
    denominator = np.asarray(denominator, dtype=MAP_DTYPE)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan, dtype=MAP_DTYPE)
    valid = mask & np.isfinite(numerator) & np.isfinite(denominator) & (denominator > 0)
    np.divide(numerator, denominator, out=out, where=valid)
    return out


def signal_loss_percent(in_phase: np.ndarray, opposed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """100 * (IP - OP) / IP."""
    ip = np.asarray(in_phase, dtype=MAP_DTYPE)
    op = np.asarray(opposed, dtype=MAP_DTYPE)
    out = _ratio(ip - op, ip, mask)
    out *= 100.0
    return out


def signal_intensity_ratio(
    in_phase: np.ndarray, opposed: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """SIR = OP / IP."""
    return _ratio(opposed, in_phase, mask)


def fat_fraction_water_fat(water: np.ndarray, fat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """100 * F / (W + F) from scanner water and fat images: unambiguous over 0-100 %."""
    w = np.asarray(water, dtype=MAP_DTYPE)
    f = np.asarray(fat, dtype=MAP_DTYPE)
    out = _ratio(f, w + f, mask)
    out *= 100.0
    return out


def fat_fraction_two_point(
    in_phase: np.ndarray, opposed: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """100 * (IP - OP) / (2 IP): magnitude two-point estimate, right only while water dominates.

    A voxel with 90 % fat and one with 10 % fat give the same value; callers record the branch.
    """
    return 0.5 * signal_loss_percent(in_phase, opposed, mask)


#: The median absolute value of the sum of three independent unit Gaussians: 0.674 x sqrt(3).
INDEPENDENT_NOISE_MEDIAN = 0.6745 * 3 ** 0.5


@dataclass(frozen=True)
class WaterFatCheck:
    """How far the scanner's water and fat agree with the in- and opposed-phase images, each
    a median relative to the median in-phase signal; noise_error: what the noise alone gives
    (see water_fat_consistency)."""

    sum_error: float
    difference_error: float
    noise_error: float


def water_fat_consistency(
    in_phase: np.ndarray,
    opposed: np.ndarray,
    water: np.ndarray,
    fat: np.ndarray,
    mask: np.ndarray,
    noise_sigma: float = 0.0,
) -> WaterFatCheck:
    """Median relative disagreement of W + F with IP and of |W - F| with OP inside tissue,
    and noise_error: what noise of noise_sigma alone gives when the four images carry their
    own noise (the median |.| of the sum of three independent Gaussians: 0.674 x sqrt(3)
    sigma, relative to the same scale). Scanners derive W and F from the echoes that make IP
    and OP, so their noise agrees and the disagreement is near 0; where it is not, the noise
    alone reaches 0.19 at SNR 12, over the tolerance a real mismatch is judged by."""
    if not mask.any():
        return WaterFatCheck(float("nan"), float("nan"), float("nan"))
    # Mask and subsample first: converting whole volumes would cost ~170 MB per body station.
    ip, op, w, f = (subsample(np.asarray(volume)[mask]).astype(np.float64)
                    for volume in (in_phase, opposed, water, fat))
    scale = float(np.median(ip)) or 1.0
    return WaterFatCheck(
        sum_error=float(np.median(np.abs(w + f - ip)) / scale),
        difference_error=float(np.median(np.abs(np.abs(w - f) - op)) / scale),
        noise_error=INDEPENDENT_NOISE_MEDIAN * noise_sigma / scale,
    )
