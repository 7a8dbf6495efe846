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
from marrownode.quant.masks import in_plane_box, label_boxes, labelled, median_reaches
from marrownode.quant.roi import roi_statistics
from marrownode.vocabulary import FocusCategory


@dataclass(frozen=True)
class FocusParameters:
    """Size limits of a focus and the T2* margin of in-phase-first pairs."""

    min_volume_mm3: float = defaults.MIN_FOCUS_VOLUME_MM3
    #: In-plane equivalent diameter of its largest section a focus must reach (mm).
    min_diameter_mm: float = defaults.MIN_FOCUS_DIAMETER_MM
    #: A low-loss spot this wide (mm) counts as a micronodule; below it, it is noise.
    min_micronodule_diameter_mm: float = 3.0
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
    #: Narrower than a focal lesion: counted per vertebra, not reported as a focus.
    micronodular: bool = False

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
    pixel_spacing_mm: tuple[float, float] | None = None,
) -> list[Focus]:
    """Connected low-loss regions inside the numbered marrow (vertebrae: bodies and posterior
    elements with their vertebra's number), largest first. With pixel_spacing_mm, a region
    narrower in-plane than parameters.min_diameter_mm is a micronodule (micronodular=True,
    kept only to be counted), however many voxels it has across slices."""
    marrow = vertebrae > 0
    margin = parameters.in_phase_first_margin_percent if in_phase_first else 0.0
    # Segment on an in-plane median of the loss, measure the raw images on the result: voxels
    # picked by their own noisy loss would bias every focus low.
    low_median = np.zeros(loss.shape, dtype=bool)
    box = in_plane_box(marrow, 1)  # the median is read on the marrow only
    if box is not None:
        low_median[box] = ~median_reaches(
            np.where(marrow[box], np.nan_to_num(loss[box], nan=100.0), 100.0),
            threshold_percent + margin, 3)
    low = marrow & np.isfinite(loss) & low_median
    labels, _ = labelled(low, box)  # low is marrow: inside its box
    search = _Search(loss, maps, in_phase, opposed, vertebrae, low, threshold_percent,
                     voxel_volume_mm3, margin, in_phase_first, fat_fraction_unambiguous,
                     skip_vertebrae, parameters)
    foci: list[Focus] = []
    for region_label, box in enumerate(label_boxes(labels), start=1):
        if box is None:
            continue
        # Each region is judged in its own box, padded past the widest ring read around it
        # (5 voxels in-plane, one slice for the hole filling): the same answer as on the full
        # grid, without a full-grid pass per region.
        crop = _padded(box, labels.shape)
        mask = labels[crop] == region_label
        size = _size(mask, voxel_volume_mm3, pixel_spacing_mm, parameters)
        if size == "micronodule":
            foci.append(_micronodule(_embed(mask, crop, labels.shape), vertebrae))
        if size != "focus":
            continue
        focus = _judge(mask, crop, search)
        if focus is not None:
            foci.append(focus)
    foci.sort(key=lambda f: (f.micronodular, -int(f.mask.sum())))
    return foci


#: Padding (in-plane voxels, slices) of a region's box: the outer ring reads 5 voxels out.
BOX_PADDING = (1, 6, 6)


def _padded(box: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """box grown by BOX_PADDING, clipped to the grid."""
    return tuple(slice(max(b.start - pad, 0), min(b.stop + pad, size))
                 for b, pad, size in zip(box, BOX_PADDING, shape, strict=True))


def _embed(mask: np.ndarray, crop: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    """A box's mask placed on the full grid."""
    full = np.zeros(shape, dtype=bool)
    full[crop] = mask
    return full


@dataclass(frozen=True)
class _Search:
    """What every candidate region is judged against (find_foci's inputs)."""

    loss: np.ndarray
    maps: dict[str, np.ndarray]
    in_phase: np.ndarray
    opposed: np.ndarray
    vertebrae: np.ndarray
    low: np.ndarray
    threshold_percent: float
    voxel_volume_mm3: float
    margin: float
    in_phase_first: bool
    fat_fraction_unambiguous: bool
    skip_vertebrae: set[int]
    parameters: FocusParameters


def _judge(mask: np.ndarray, crop: tuple[slice, ...], search: _Search) -> Focus | None:
    """A region large enough to be a focus, measured and categorised in its box; None when
    its vertebra is skipped (diffuse), it is most of its vertebra, or it is no focus."""
    vertebrae, parameters = search.vertebrae, search.parameters
    numbered = vertebrae[crop]
    vertebra = int(np.bincount(numbered[mask]).argmax())
    whole = int((vertebrae == vertebra).sum())
    if (vertebra in search.skip_vertebrae
            or int(mask.sum()) > parameters.max_vertebra_fraction * whole):
        return None
    marrow = numbered > 0
    mask = mask | (ndimage.binary_fill_holes(mask) & marrow)
    in_phase_box = search.in_phase[crop]
    statistics = roi_statistics(mask, {name: values[crop] for name, values in search.maps.items()},
                                in_phase_box, search.opposed[crop], search.voxel_volume_mm3)
    surround = _ring(mask, 1, 4) & (numbered == vertebra) & ~search.low[crop]
    surround_ip = float(np.median(in_phase_box[surround])) if surround.any() else float("nan")
    ip_ratio = (float(statistics["in_phase_mean"]) / surround_ip
                if np.isfinite(surround_ip) and surround_ip > 0 else None)
    category = _category(statistics, ip_ratio, search.threshold_percent, search.margin,
                         search.in_phase_first, search.fat_fraction_unambiguous, parameters)
    if category is None:
        return None  # a region that only the margin let in, and not near the threshold
    return Focus(_embed(mask, crop, vertebrae.shape), vertebra, statistics, category,
                 margin_sharpness(mask, search.loss[crop], marrow), ip_ratio)


def _size(mask: np.ndarray, voxel_volume_mm3: float,
          pixel_spacing_mm: tuple[float, float] | None, parameters: FocusParameters) -> str:
    """'focus', 'micronodule' (narrower than a focal lesion, still a spot) or 'none'."""
    count = int(mask.sum())
    if count < parameters.min_voxels:
        return "none"
    diameter = _diameter_mm(mask, pixel_spacing_mm)
    if diameter is not None and diameter < parameters.min_diameter_mm:
        return ("micronodule" if diameter >= parameters.min_micronodule_diameter_mm
                else "none")
    return "focus" if count * voxel_volume_mm3 >= parameters.min_volume_mm3 else "none"


def _category(statistics: dict[str, object], ip_ratio: float | None, threshold_percent: float,
              margin: float, in_phase_first: bool, fat_fraction_unambiguous: bool,
              parameters: FocusParameters) -> FocusCategory | None:
    """What a focus is: fat-containing (brighter than its marrow, or fat-rich), indeterminate
    (an in-phase-first pair near the threshold), low signal loss; None when only the T2*
    margin let it in and it is not near the threshold."""
    maps: dict[str, dict[str, float]] = statistics["maps"]  # type: ignore[assignment]
    fat_mean = maps["fat_fraction_percent"]["mean"]
    focus_loss = float(statistics["signal_loss_ratio_of_means_percent"])  # type: ignore[arg-type]
    if (ip_ratio is not None and ip_ratio > parameters.fat_brighter_factor) or (
            fat_fraction_unambiguous and fat_mean > 50.0):
        return FocusCategory.FAT_CONTAINING
    if in_phase_first and abs(focus_loss - threshold_percent) < margin:
        return FocusCategory.INDETERMINATE
    if focus_loss >= threshold_percent:
        return None
    return FocusCategory.LOW_SIGNAL_LOSS


def _diameter_mm(mask: np.ndarray, pixel_spacing_mm: tuple[float, float] | None
                 ) -> float | None:
    """How wide the region is in-plane, as calipers across it measure: the largest extent
    along rows or columns over its sections, whole pixels counted (None: spacing unknown)."""
    if pixel_spacing_mm is None:
        return None
    widest = 0.0
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        rows = np.flatnonzero(mask[k].any(axis=1))
        columns = np.flatnonzero(mask[k].any(axis=0))
        widest = max(widest, (rows[-1] - rows[0] + 1) * pixel_spacing_mm[0],
                     (columns[-1] - columns[0] + 1) * pixel_spacing_mm[1])
    return float(widest)


def _micronodule(mask: np.ndarray, vertebrae: np.ndarray) -> Focus:
    """A spot too small to be a focal lesion, kept only to be counted per vertebra."""
    vertebra = int(np.bincount(vertebrae[mask]).argmax())
    return Focus(mask, vertebra, {}, FocusCategory.LOW_SIGNAL_LOSS, None, None,
                 micronodular=True)
