"""The patient's body and the tissue inside it, with a noise floor that holds on any background.

Scanners write the background as Rician noise, or as exact zeros (masked or zero-filled
reconstructions), and parallel imaging makes the noise vary across the field. A noise level
read from the corners is then 0 or wrong. So the body comes first (it needs no noise level),
and the noise is measured where it is known to be: in the background when the background holds
noise, else in the tissue itself, from the residual of a small median filter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from marrownode.quant.maps import finite_or_zero, subsample
from marrownode.quant.masks import in_plane_box, labelled, square_dilated, square_eroded

#: A voxel is tissue when its in-phase signal exceeds this many noise sigmas.
NOISE_MULTIPLE = 4.0
#: ... and this fraction of the bright end of the image (noiseless or zero-filled images).
MIN_RELATIVE_SIGNAL = 0.03
#: The body is what exceeds this fraction of the bright end, holes filled, largest part kept.
BODY_RELATIVE_SIGNAL = 0.10
#: MAD of a Gaussian over sigma, and the extra variance of a 3x3 median residual.
_MAD_TO_SIGMA = 1.4826
_MEDIAN_RESIDUAL_INFLATION = 1.09


@dataclass(frozen=True)
class BodyMasks:
    """body: inside the patient (air in lungs and bowel included); tissue: body with signal
    clearly above the noise; how the noise was measured and its level."""

    body: np.ndarray
    tissue: np.ndarray
    noise_sigma: float
    noise_source: str  # "background" | "tissue_residual" | "none"
    #: The bright end (99th percentile) of the in-phase signal inside the body: fat on T1.
    signal_level: float


def bright_end(volume: np.ndarray) -> float:
    """The 99th percentile of the finite voxels (a robust 'maximum')."""
    values = subsample(volume[np.isfinite(volume)].ravel())
    return float(np.percentile(values, 99)) if values.size else 0.0


#: In-plane 4-connectivity, no link across slices: how ndimage.binary_fill_holes reaches
#: the background of one slice from its border.
_IN_PLANE_CROSS = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_CROSS[1] = ndimage.generate_binary_structure(2, 1)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Holes filled in each slice's plane (a 3-D fill would leave the end slices open): the
    same as ndimage.binary_fill_holes slice by slice, in one labelling of the background
    (a hole is a background part that does not reach its slice's edge), several times faster
    than the fill's propagation on large slices."""
    filled: np.ndarray = np.zeros(mask.shape, dtype=bool)
    # In the mask's in-plane box and one voxel around it: that ring is background joined to
    # everything outside the box, so a part reaches the box's edge exactly when it reaches the
    # slice's (or the box is the slice).
    box = in_plane_box(mask, 1)
    if box is None:
        return filled
    background, _ = ndimage.label(~mask[box], structure=_IN_PLANE_CROSS)
    edge = np.concatenate([background[:, 0, :], background[:, -1, :],
                           background[:, :, 0], background[:, :, -1]], axis=None)
    outside = np.zeros(int(background.max()) + 1, dtype=bool)
    outside[edge] = True
    outside[0] = False  # label 0 is the mask itself
    filled[box] = ~outside[background]
    return filled


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = labelled(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest: np.ndarray = labels == int(np.argmax(sizes))
    return largest


def body_mask(volume: np.ndarray, bright: float) -> np.ndarray:
    """The patient: bright enough, holes filled slice by slice, the largest connected part.
    volume: find_body's finite float32 volume; bright: its bright_end."""
    level = BODY_RELATIVE_SIGNAL * bright
    if level <= 0:
        return np.zeros(volume.shape, dtype=bool)
    rough = square_dilated(square_eroded(volume > level, 1), 1)  # an in-plane 3 x 3 opening
    return fill_holes_per_slice(_largest_component(rough))


def _rayleigh_sigma(values: np.ndarray) -> float:
    """Sigma of Rayleigh-distributed air noise, robust to some tissue among the samples: start
    from the lower quartile (q25 = 0.7585 sigma), refine on samples below 4 sigma."""
    values = values.astype(np.float64)
    sigma = float(np.percentile(values, 25)) / 0.7585
    for _ in range(10):
        if sigma <= 0:
            return 0.0
        kept = values[values <= 4.0 * sigma]
        if kept.size == 0:
            break
        new_sigma = float(np.sqrt(np.mean(kept ** 2) / 2.0))
        if abs(new_sigma - sigma) <= 1e-6 * sigma:
            return new_sigma
        sigma = new_sigma
    return sigma


def _residual_sigma(volume: np.ndarray, interior: np.ndarray) -> float:
    """Noise from the tissue: robust spread of the residual of an in-plane 3x3 median."""
    box = in_plane_box(interior, 1)  # the residual is read inside only
    if box is None:
        return 0.0
    residual = volume[box] - ndimage.median_filter(volume[box], size=(1, 3, 3))
    values = subsample(residual[interior[box]].astype(np.float64))
    mad = float(np.median(np.abs(values - np.median(values))))
    return _MAD_TO_SIGMA * mad / float(np.sqrt(_MEDIAN_RESIDUAL_INFLATION))


def find_body(in_phase: np.ndarray) -> BodyMasks:
    """Body, tissue and the noise level of an in-phase volume (slice, row, column)."""
    volume = finite_or_zero(np.asarray(in_phase, dtype=np.float32))
    bright = bright_end(volume)
    body = body_mask(volume, bright)
    ring = square_dilated(body, 2)  # in-plane 5 x 5
    background = volume[~ring]
    zero_fraction = float(np.mean(background == 0)) if background.size else 1.0
    if background.size >= 1000 and zero_fraction < 0.5:
        sigma, source = _rayleigh_sigma(subsample(background[background > 0])), "background"
    else:
        interior = square_eroded(body, 2)
        sigma, source = _residual_sigma(volume, interior), "tissue_residual"
    floor = max(NOISE_MULTIPLE * sigma, MIN_RELATIVE_SIGNAL * bright,
                float(np.finfo(np.float32).tiny))
    tissue = body & (volume > floor)
    # The body's values in raster order: what np.where(body, volume, nan) keeps finite.
    level = bright_end(volume[body]) if body.any() else 0.0
    return BodyMasks(body=body, tissue=tissue, noise_sigma=sigma,
                     noise_source=source if body.any() else "none", signal_level=level)
