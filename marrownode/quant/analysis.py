"""One Dixon set: body, maps, vertebral marrow, per-vertebra findings, foci and the pattern.

Every finding lives inside localised vertebral marrow (docs/architecture.md, "marrow first").
When the localiser does not find a spine, the maps are still made, and nothing else is claimed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from marrownode import defaults
from marrownode.quant.body import find_body
from marrownode.quant.foci import Focus, FocusParameters, find_foci
from marrownode.quant.geometry import (
    VolumeGeometry,
)
from marrownode.quant.internal_standards import t1_internal_standards
from marrownode.quant.localisation import Localisation, SpineParameters
from marrownode.quant.maps import (
    WaterFatCheck,
    fat_fraction_two_point,
    fat_fraction_water_fat,
    signal_intensity_ratio,
    signal_loss_percent,
    water_fat_consistency,
)
from marrownode.quant.masks import label_boxes, voxel_indices
from marrownode.quant.normal_structures import EndplateBand, without_normal_structures
from marrownode.quant.roi import roi_statistics
from marrownode.quant.spine import localise
from marrownode.quant.thresholds import DEFAULT_THRESHOLDS, select_threshold
from marrownode.vocabulary import FatFractionMethod, Flag, LocalisationMethod, Margin, Pattern

#: Hears the final signal-loss map, fat-fraction map and how the fat fraction was measured.
MapsHook = Callable[[np.ndarray, np.ndarray, FatFractionMethod], None]

#: Median disagreement (relative to median in-phase signal) above which W/F are not trusted.
WATER_FAT_TOLERANCE = 0.10
#: ... plus this many times the disagreement noise alone gives (maps.water_fat_consistency).
WATER_FAT_NOISE_MARGIN = 1.5
#: Fat-fraction methods, most trustworthy first.


@dataclass(frozen=True)
class QuantParameters:
    """Thresholds per field strength and the localiser's and foci's limits."""

    thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS
    field_strength_tolerance_t: float = defaults.FIELD_STRENGTH_TOLERANCE_T
    foci: FocusParameters = FocusParameters()
    spine: SpineParameters = SpineParameters()


@dataclass
class VertebraFinding:
    """One vertebral body (its posterior elements counted apart)."""

    number: int
    label: str
    centroid_patient_mm: tuple[float, float, float]
    voxel_count: int
    volume_mm3: float
    signal_loss_percent_median: float
    sir_median: float
    fat_fraction_percent_median: float
    in_phase_median: float
    fraction_below_threshold: float | None
    pattern: Pattern
    in_phase_to_muscle_ratio: float | None
    in_phase_to_disc_ratio: float | None
    posterior_voxel_count: int
    posterior_signal_loss_percent_median: float | None
    micronodule_count: int = 0  # low-loss spots under the focal-lesion size
    #: Low-loss bands along its endplates (Modic type 1 pattern): endplate findings.
    endplate_bands: list[EndplateBand] = field(default_factory=list)


@dataclass
class QuantResult:
    """Maps (NaN outside tissue), the localisation and everything found inside it."""

    body: np.ndarray
    tissue: np.ndarray
    signal_loss: np.ndarray
    sir: np.ndarray
    fat_fraction: np.ndarray
    fat_fraction_method: FatFractionMethod
    noise_sigma: float
    noise_source: str
    threshold_percent: float | None
    threshold_field_strength_t: float | None
    localisation: Localisation
    flags: list[Flag] = field(default_factory=list)
    vertebrae: list[VertebraFinding] = field(default_factory=list)
    foci: list[Focus] = field(default_factory=list)
    #: Vertebra number -> low-loss spots too small to be focal lesions (micronodules).
    micronodules: dict[int, int] = field(default_factory=dict)
    #: Low-loss bands along endplates (Modic type 1 pattern): endplate findings, not foci.
    endplate_bands: list[EndplateBand] = field(default_factory=list)
    pattern: Pattern = Pattern.NOT_ASSESSED
    marrow_summary: dict[str, float | int | None] | None = None
    water_fat_check: WaterFatCheck | None = None
    muscle_in_phase: float | None = None
    disc_in_phase: float | None = None
    signal_level: float = 0.0  # the body's bright end (fat on T1)

    @property
    def focus_masks(self) -> list[np.ndarray]:
        """The foci's masks, in report order."""
        return [focus.mask for focus in self.foci]


def _median(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else float("nan")


def _fat_fraction(ip: np.ndarray, op: np.ndarray, water: np.ndarray | None,
                  fat: np.ndarray | None, scanner_pdff: np.ndarray | None,
                  tissue: np.ndarray, noise_sigma: float,
                  ) -> tuple[np.ndarray, FatFractionMethod, WaterFatCheck | None, bool]:
    """The best fat fraction available, its method, the W/F check and whether W/F is suspect
    (a disagreement over the tolerance beyond what the images' own noise explains)."""
    check = None
    suspect = False
    if water is not None and fat is not None:
        check = water_fat_consistency(ip, op, water, fat, tissue, noise_sigma)
        tolerance = WATER_FAT_TOLERANCE + WATER_FAT_NOISE_MARGIN * check.noise_error
        suspect = not (check.sum_error <= tolerance and check.difference_error <= tolerance)
    if scanner_pdff is not None:
        pdff = np.where(tissue, np.asarray(scanner_pdff, dtype=np.float32), np.nan)
        return pdff.astype(np.float32), FatFractionMethod.SCANNER_PDFF, check, suspect
    if water is not None and fat is not None:
        return (fat_fraction_water_fat(water, fat, tissue), FatFractionMethod.WATER_FAT, check,
                suspect)
    return (fat_fraction_two_point(ip, op, tissue), FatFractionMethod.SIGNAL_FAT_FRACTION, None,
            False)


def _vertebrae(result: QuantResult, ip: np.ndarray,
               geometry: VolumeGeometry, foci_by_vertebra: set[int]) -> list[VertebraFinding]:
    localisation = result.localisation
    threshold = result.threshold_percent
    voxel_volume = float(np.prod(geometry.spacing_mm))
    findings = []
    body_boxes = label_boxes(localisation.bodies)
    posterior_boxes = label_boxes(localisation.posterior)
    for number, label in enumerate(localisation.labels, start=1):
        box = body_boxes[number - 1] if number <= len(body_boxes) else None
        box = box or (slice(0, 0),) * 3  # (a body with no voxel left: empty statistics)
        mask = localisation.bodies[box] == number
        loss = result.signal_loss[box][mask]
        finite = loss[np.isfinite(loss)]
        below = float(np.mean(finite < threshold)) if threshold is not None and finite.size \
            else None
        median_loss = _median(loss)
        if threshold is None:
            pattern = Pattern.NOT_ASSESSED
        elif median_loss < threshold:
            pattern = Pattern.DIFFUSE
        elif number in foci_by_vertebra:
            pattern = Pattern.FOCAL
        else:
            pattern = Pattern.NORMAL
        ip_median = _median(ip[box][mask])
        back = (posterior_boxes[number - 1] if number <= len(posterior_boxes) else None) or (
            slice(0, 0),) * 3
        posterior = localisation.posterior[back] == number
        offset = np.array([s.start for s in box], dtype=np.float64)
        centroid = geometry.to_patient(np.argwhere(mask).mean(axis=0) + offset)
        findings.append(VertebraFinding(
            number=number, label=label,
            centroid_patient_mm=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
            voxel_count=int(mask.sum()), volume_mm3=float(mask.sum() * voxel_volume),
            signal_loss_percent_median=median_loss,
            sir_median=_median(result.sir[box][mask]),
            fat_fraction_percent_median=_median(result.fat_fraction[box][mask]),
            in_phase_median=ip_median, fraction_below_threshold=below, pattern=pattern,
            in_phase_to_muscle_ratio=(ip_median / result.muscle_in_phase
                                      if result.muscle_in_phase else None),
            in_phase_to_disc_ratio=(ip_median / result.disc_in_phase
                                    if result.disc_in_phase else None),
            posterior_voxel_count=int(posterior.sum()),
            posterior_signal_loss_percent_median=(_median(result.signal_loss[back][posterior])
                                                  if posterior.any() else None),
            micronodule_count=result.micronodules.get(number, 0),
            endplate_bands=[b for b in result.endplate_bands if b.vertebra == number],
        ))
    return findings


#: Variegated: micronodules in at least this many vertebrae (and this many in all).
VARIEGATED_VERTEBRAE, VARIEGATED_SPOTS = 3, 6


def _t1_fails(vertebra: VertebraFinding) -> bool:
    """The T1 internal standard fails: marrow darker than both muscle and disc in-phase."""
    muscle, disc = vertebra.in_phase_to_muscle_ratio, vertebra.in_phase_to_disc_ratio
    return muscle is not None and disc is not None and muscle < 1.0 and disc < 1.0


def _set_pattern(vertebrae: list[VertebraFinding], foci: list[Focus],
                 micronodules: dict[int, int]) -> Pattern:
    """The seed's patterns, in this order (docs/marrow-localisation.md):
    diffuse: at least half the levels lose too little, or fail the T1 internal standard
    (darker than disc and muscle, even where T1 weighting keeps the loss up), with foci:
    diffuse_and_focal; variegated: micronodules (low-loss spots under 5 mm) in at least 3
    levels and 6 in all; multifocal: two foci or more; focal: one focus (or a level with
    an unconfirmed low-loss region); normal: none of these."""
    if not vertebrae or any(v.pattern == Pattern.NOT_ASSESSED for v in vertebrae):
        return Pattern.NOT_ASSESSED
    diffuse = sum(v.pattern == Pattern.DIFFUSE or _t1_fails(v) for v in vertebrae)
    if diffuse * 2 >= len(vertebrae):
        return Pattern.DIFFUSE_AND_FOCAL if foci else Pattern.DIFFUSE
    if (sum(1 for count in micronodules.values() if count) >= VARIEGATED_VERTEBRAE
            and sum(micronodules.values()) >= VARIEGATED_SPOTS):
        return Pattern.VARIEGATED
    if len(foci) >= 2:
        return Pattern.MULTIFOCAL
    if foci or any(v.pattern != Pattern.NORMAL for v in vertebrae):
        return Pattern.FOCAL
    return Pattern.NORMAL


def analyse_set(
    in_phase: np.ndarray,
    opposed: np.ndarray,
    spacing_mm: tuple[float, float, float],
    field_strength_t: float | None,
    water: np.ndarray | None = None,
    fat: np.ndarray | None = None,
    parameters: QuantParameters = QuantParameters(),
    geometry: VolumeGeometry | None = None,
    scanner_pdff: np.ndarray | None = None,
    in_phase_first: bool = False,
    localisation: Localisation | None = None,
    on_maps: MapsHook | None = None,
) -> QuantResult:
    """Maps, marrow and findings for aligned (slice, row, column) volumes; localisation:
    vertebrae given by a segmentation, instead of finding them in the images. on_maps hears
    the signal-loss and fat-fraction maps as soon as they exist (final: nothing changes them
    later), so what depends on them alone can begin while the marrow is localised."""
    ip = np.asarray(in_phase, dtype=np.float32)
    op = np.asarray(opposed, dtype=np.float32)
    if ip.shape != op.shape:
        raise ValueError(f"in-phase {ip.shape} and opposed-phase {op.shape} differ in shape")
    geometry = geometry or VolumeGeometry.identity(spacing_mm)
    body = find_body(ip)
    tissue = body.tissue
    loss = signal_loss_percent(ip, op, tissue)
    fat_fraction, method, check, suspect = _fat_fraction(ip, op, water, fat, scanner_pdff,
                                                         tissue, body.noise_sigma)
    if on_maps is not None:
        on_maps(loss, fat_fraction, method)
    flags = [Flag.WATER_FAT_SWAP_SUSPECTED] if suspect else []
    if method == FatFractionMethod.SIGNAL_FAT_FRACTION:
        flags.append(Flag.FAT_FRACTION_AMBIGUOUS_ABOVE_50)
    choice = select_threshold(field_strength_t, parameters.thresholds,
                              parameters.field_strength_tolerance_t)
    if choice.flag:
        flags.append(choice.flag)
    if localisation is None:
        localisation = localise(ip, loss, tissue, body.body, geometry, parameters.spine,
                                body.signal_level)
    result = QuantResult(
        body=body.body, tissue=tissue, signal_loss=loss,
        sir=signal_intensity_ratio(ip, op, tissue), fat_fraction=fat_fraction,
        fat_fraction_method=method, noise_sigma=body.noise_sigma, noise_source=body.noise_source,
        threshold_percent=choice.threshold_percent,
        threshold_field_strength_t=choice.field_strength_t, localisation=localisation,
        flags=flags, water_fat_check=check, signal_level=body.signal_level)
    if not localisation.localised:
        result.flags.append(Flag.MARROW_NOT_LOCALISED)
        return result
    localisation = result.localisation
    if localisation.method == LocalisationMethod.IMAGE and (
            not localisation.levels or None in localisation.levels):
        result.flags.append(Flag.LEVELS_UNCERTAIN)  # V-numbers only: never a guessed name
    _find_in_marrow(result, ip, op, geometry, parameters, in_phase_first,
                    method != FatFractionMethod.SIGNAL_FAT_FRACTION and not suspect)
    return result


def _find_in_marrow(result: QuantResult, ip: np.ndarray, op: np.ndarray,
                    geometry: VolumeGeometry, parameters: QuantParameters,
                    in_phase_first: bool, fat_fraction_unambiguous: bool) -> None:
    """Per-vertebra findings, foci, pattern, T1 standards and the marrow summary."""
    localisation = result.localisation
    voxel_volume = float(np.prod(geometry.spacing_mm))
    result.muscle_in_phase, result.disc_in_phase = t1_internal_standards(
        ip, result.signal_loss, result.tissue, localisation, geometry, parameters.spine,
        result.signal_level)
    maps = {"signal_loss_percent": result.signal_loss, "sir": result.sir,
            "fat_fraction_percent": result.fat_fraction}
    threshold = result.threshold_percent
    numbered = np.where(localisation.bodies > 0, localisation.bodies, localisation.posterior)
    if threshold is not None:
        boxes = label_boxes(localisation.bodies)
        diffuse = {n for n, box in enumerate(boxes, start=1) if box is not None
                   and n <= len(localisation.labels)
                   and _median(result.signal_loss[box][localisation.bodies[box] == n])
                   < threshold}
        found = find_foci(result.signal_loss, maps, ip, op, numbered, threshold,
                          voxel_volume, in_phase_first, fat_fraction_unambiguous,
                          diffuse, parameters.foci,
                          pixel_spacing_mm=(geometry.spacing_mm[1], geometry.spacing_mm[2]))
        lesions, result.endplate_bands = without_normal_structures(
            found, localisation.bodies, geometry)
        result.foci = [f for f in lesions if not f.micronodular]
        for spot in lesions:
            if spot.micronodular:
                result.micronodules[spot.vertebra] = result.micronodules.get(spot.vertebra, 0) + 1
    result.vertebrae = _vertebrae(result, ip, geometry,
                                  {f.vertebra for f in result.foci})
    result.pattern = Pattern.NOT_ASSESSED if threshold is None else _set_pattern(
        result.vertebrae, result.foci, result.micronodules)
    if any(v.in_phase_to_muscle_ratio is not None and v.in_phase_to_muscle_ratio < 1.0
           for v in result.vertebrae):
        result.flags.append(Flag.MARROW_DARKER_THAN_MUSCLE)
    if any(v.in_phase_to_disc_ratio is not None and v.in_phase_to_disc_ratio < 1.0
           for v in result.vertebrae):
        result.flags.append(Flag.MARROW_DARKER_THAN_DISC)
    bodies = localisation.bodies > 0
    summary = roi_statistics(bodies, maps, ip, op, voxel_volume)
    finite = result.signal_loss[bodies]
    finite = finite[np.isfinite(finite)]
    result.marrow_summary = {
        "voxel_count": int(bodies.sum()),
        "signal_loss_percent_median": summary["maps"]["signal_loss_percent"]["median"],
        "sir_median": summary["maps"]["sir"]["median"],
        "fat_fraction_percent_median": summary["maps"]["fat_fraction_percent"]["median"],
        "fraction_below_threshold": (float(np.mean(finite < threshold))
                                     if threshold is not None and finite.size else None),
    }


def focus_record(focus: Focus, geometry: VolumeGeometry, threshold_percent: float,
                 labels: list[str], sharp_margin: float,
                 levels: list[str | None] | None = None) -> dict[str, Any]:
    """The report entry of one focus (numbers not yet rounded)."""
    mask = focus.mask
    stats = focus.statistics
    spacing = geometry.spacing_mm
    per_slice = mask.sum(axis=(1, 2))
    slices = np.flatnonzero(per_slice)
    centroid = geometry.to_patient(voxel_indices(mask).mean(axis=0))
    loss = float(stats["signal_loss_ratio_of_means_percent"])  # type: ignore[arg-type]
    maps: dict[str, dict[str, float]] = stats["maps"]  # type: ignore[assignment]
    sharpness = focus.margin_sharpness
    return {
        "vertebra": labels[focus.vertebra - 1] if 0 < focus.vertebra <= len(labels) else None,
        "level": (levels[focus.vertebra - 1] if levels and 0 < focus.vertebra <= len(levels)
                  else None),
        "slice_count": int(slices.size),
        "slice_indices": [int(s) for s in slices],
        "area_mm2": float(per_slice.max() * spacing[1] * spacing[2]),
        "volume_mm3": float(stats["volume_mm3"]),  # type: ignore[arg-type]
        "voxel_count": int(stats["voxel_count"]),  # type: ignore[call-overload]
        "centroid_patient_mm": [round(float(c), 1) for c in centroid],
        "signal_loss_percent": loss,
        "sir": float(stats["sir_ratio_of_means"]),  # type: ignore[arg-type]
        "fat_fraction_percent": maps["fat_fraction_percent"]["mean"],
        "below_threshold": bool(loss < threshold_percent),
        "category": focus.category,
        "margin_sharpness": sharpness,
        "margin": (None if sharpness is None
                   else Margin.SHARP if sharpness >= sharp_margin else Margin.ILL_DEFINED),
        "in_phase_to_marrow_ratio": focus.in_phase_to_marrow_ratio,
    }
