"""TID 1500 Comprehensive 3D SR: an image-level group for the set (field strength, threshold,
whether marrow was localised, the pattern, the flags), one group per localised vertebral body
(medians over its marrow, the T1 internal standard, its pattern), and one volumetric group per
focus with its outline on every slice, its vertebra, category and margin.

No group carries a number over tissue that is not localised marrow. Standard codes where they
exist (DCM fat fraction, magnetic field strength, median; SCT volume, area, lesion, bone
marrow, vertebral body, focal, diffuse); a declared private scheme for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from skimage import measure

from marrownode import ALGORITHM_VERSION
from marrownode.report import FocusReport, SetReport, VertebraReport
from marrownode.results.common import (
    MANUFACTURER,
    MODEL_NAME,
    VERTEBRAL_BODY,
    SourcePlane,
    SourceSeries,
    level_concept,
    stamp,
)
from marrownode.results.highdicom_adapter import sr_content_taken_as_built
from marrownode.results.sr_companions import CompanionImages
from marrownode.results.sr_follow_up import FollowUp, centroid_items
from marrownode.uids import derived_uid
from marrownode.vocabulary import (
    FatFractionMethod,
    FatSuppression,
    Flag,
    FocusCategory,
    Margin,
    Pattern,
)

SCHEME = "99MARROWNODE"
SCHEME_NAME = "marrownode private codes"
SIGNAL_LOSS = Code("MN001", SCHEME, "Chemical shift signal loss")
SIR = Code("MN002", SCHEME, "Opposed-phase to in-phase signal intensity ratio")
THRESHOLD = Code("MN003", SCHEME, "Signal loss threshold")
THRESHOLD_EVALUATION = Code("MN004", SCHEME, "Signal loss compared with threshold")
BELOW = Code("MN005", SCHEME, "Below threshold: fat not demonstrated")
AT_OR_ABOVE = Code("MN006", SCHEME, "At or above threshold: fat demonstrated")
ANALYSIS_FLAG = Code("MN007", SCHEME, "Analysis flag")
NO_THRESHOLD = Code("MN008", SCHEME, "No threshold for this field strength")
MARROW_LOCALISATION = Code("MN009", SCHEME, "Vertebral marrow localisation")
MARROW_LOCALISED = Code("MN010", SCHEME, "Vertebral marrow localised from the images")
MARROW_NOT_LOCALISED = Code("MN011", SCHEME, "Marrow not localised: maps only")
MARROW_PATTERN = Code("MN012", SCHEME, "Marrow signal loss pattern")
PRIOR_PATTERN = Code("MN409", SCHEME, "Marrow signal loss pattern in prior study")
FRACTION_BELOW = Code("MN013", SCHEME, "Fraction of marrow below threshold")
IP_TO_MUSCLE = Code("MN014", SCHEME, "In-phase marrow to paraspinal muscle ratio")
IP_TO_DISC = Code("MN015", SCHEME, "In-phase marrow to intervertebral disc ratio")
RATIO_OF_MEANS = Code("MN016", SCHEME, "Ratio of ROI means")
FOCUS_CATEGORY = Code("MN017", SCHEME, "Focus category")
MARGIN = Code("MN018", SCHEME, "Focus margin")
FAT_FRACTION_METHOD = Code("MN019", SCHEME, "Fat fraction method")
CATEGORY_CODES = {
    FocusCategory.LOW_SIGNAL_LOSS: Code("MN201", SCHEME, "Low signal loss: fat not demonstrated"),
    FocusCategory.FAT_CONTAINING: Code("MN202", SCHEME,
                                       "Fat-containing (haemangioma or focal fat)"),
    FocusCategory.INDETERMINATE: Code("MN203", SCHEME, "Indeterminate: within the T2* margin"),
}
MARGIN_CODES = {Margin.SHARP: Code("MN211", SCHEME, "Sharply marginated"),
                Margin.ILL_DEFINED: Code("MN212", SCHEME, "Ill-defined margin")}
PATTERN_CODES = {
    Pattern.NORMAL: Code("17621005", "SCT", "Normal"),
    Pattern.FOCAL: codes.SCT.Focal,
    Pattern.DIFFUSE: codes.SCT.Diffuse,
    Pattern.NOT_ASSESSED: Code("MN220", SCHEME, "Not assessed"),
    Pattern.MULTIFOCAL: Code("MN221", SCHEME, "Multifocal"),
    Pattern.DIFFUSE_AND_FOCAL: Code("MN222", SCHEME, "Diffuse and focal"),
    Pattern.VARIEGATED: Code("MN223", SCHEME, "Variegated (micronodular)"),
}
METHOD_CODES = {
    FatFractionMethod.SCANNER_PDFF: Code("MN231", SCHEME, "Scanner proton-density fat fraction"),
    FatFractionMethod.WATER_FAT: Code("MN232", SCHEME,
                                      "Fat fraction from scanner water and fat images"),
    FatFractionMethod.SIGNAL_FAT_FRACTION: Code("MN233", SCHEME,
                                                "Two-point signal fat fraction, 0-50 % scale"),
}
FLAG_CODES = {
    Flag.IN_PHASE_FIRST: Code("MN101", SCHEME, "In-phase echo acquired first"),
    Flag.ROLES_FROM_ECHO_TIME: Code("MN102", SCHEME, "Echo roles from echo time"),
    Flag.FAT_FRACTION_AMBIGUOUS_ABOVE_50: Code("MN103", SCHEME, "Two-point fat fraction ambiguous"),
    Flag.WATER_FAT_SWAP_SUSPECTED: Code("MN104", SCHEME, "Water/fat inconsistent with echoes"),
    Flag.NO_THRESHOLD_FOR_FIELD_STRENGTH: Code("MN105", SCHEME, "No threshold for field strength"),
    Flag.NO_FIELD_STRENGTH: Code("MN106", SCHEME, "Field strength unknown"),
    Flag.WATER_OR_FAT_MISSING: Code("MN107", SCHEME, "Only one of water and fat present"),
    Flag.MARROW_NOT_LOCALISED: Code("MN108", SCHEME, "Marrow not localised"),
    Flag.MARROW_DARKER_THAN_MUSCLE: Code("MN109", SCHEME, "Marrow darker than muscle on T1"),
    Flag.MARROW_DARKER_THAN_DISC: Code("MN110", SCHEME, "Marrow darker than disc on T1"),
    Flag.LEVELS_UNCERTAIN: Code("MN111", SCHEME, "Vertebral levels not fixed by an anchor"),
    Flag.ENHANCING_FOCUS: Code("MN112", SCHEME, "Focus enhancing beyond normal marrow"),
    Flag.HIGH_SIGNAL_AFTER_FAT_SATURATION: Code("MN113", SCHEME,
                                                "High signal after fat saturation"),
}
FAT_SUPPRESSION = Code("MN310", SCHEME, "Fat suppression of a fat-containing focus")
FAT_SUPPRESSION_CODES = {
    FatSuppression.COMPLETE: Code("MN311", SCHEME, "Complete fat suppression (benign pattern)"),
    FatSuppression.INCOMPLETE: Code("MN312", SCHEME, "Incomplete fat suppression"),
}

PERCENT = codes.UCUM.Percent
TESLA = Code("T", "UCUM", "Tesla")
RATIO = Code("1", "UCUM", "no units")
CUBIC_MM = Code("mm3", "UCUM", "cubic millimeter")
SQUARE_MM = Code("mm2", "UCUM", "square millimeter")


def measurement_item(name: Code, value: float | None, unit: Code,
                     derivation: Code | None = None,
                     algorithm: hd.sr.AlgorithmIdentification | None = None,
                     ) -> hd.sr.Measurement | None:
    """A NUM content item, or None for a value that is missing or not finite."""
    if value is None or not np.isfinite(value):
        return None
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, derivation=derivation,
                             algorithm_id=algorithm)


def _outline(mask2d: np.ndarray) -> np.ndarray | None:
    """Closed polygon (column, row) around the largest contour of a slice of a focus."""
    padded = np.pad(mask2d.astype(float), 1)
    contours = measure.find_contours(padded, 0.5)  # type: ignore[no-untyped-call]
    if not contours:
        return None
    contour = max(contours, key=len) - 1.0  # undo the padding
    step = max(1, len(contour) // 64)
    points = contour[::step]
    points = np.vstack([points, points[:1]])
    return np.ascontiguousarray(points[:, ::-1] + 0.5, dtype=np.float32)  # pixel centres


def _source_region(plane: SourcePlane) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=plane.sop_class_uid,
        referenced_sop_instance_uid=plane.sop_instance_uid,
        referenced_frame_numbers=[plane.frame_number] if plane.frame_number else None,
    )


def _name(vertebra: VertebraReport) -> str:
    """'L3 (V3)' where the level is named, else 'V3'."""
    return f"{vertebra.level} ({vertebra.label})" if vertebra.level else vertebra.label


def _level_sites(level: str | None) -> list[hd.sr.FindingSite]:
    """The finding sites of a body at a level: the vertebra's SNOMED CT code (CID 7603; the
    sacrum for a sacral segment) when the level is named, and the vertebral body."""
    concept = level_concept(level)
    sites = [hd.sr.FindingSite(concept)] if concept else []
    return [*sites, hd.sr.FindingSite(VERTEBRAL_BODY)]


def _vertebra_group(vertebra: VertebraReport, algorithm: hd.sr.AlgorithmIdentification,
                    companions: CompanionImages, follow_up: FollowUp,
                    ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One vertebral body: medians over its localised marrow and the T1 internal standard
    (and, with companion series, its enhancement and fat-suppressed signal)."""
    median = codes.DCM.Median
    measurements = [m for m in (
        measurement_item(SIGNAL_LOSS, vertebra.signal_loss_percent_median, PERCENT, median,
                     algorithm),
        measurement_item(SIR, vertebra.sir_median, RATIO, median, algorithm),
        measurement_item(codes.DCM.FatFraction, vertebra.fat_fraction_percent_median, PERCENT,
                     median, algorithm),
        measurement_item(FRACTION_BELOW, None if vertebra.fraction_below_threshold is None
                     else 100.0 * vertebra.fraction_below_threshold, PERCENT, None, algorithm),
        measurement_item(IP_TO_MUSCLE, vertebra.in_phase_to_muscle_ratio, RATIO, median, algorithm),
        measurement_item(IP_TO_DISC, vertebra.in_phase_to_disc_ratio, RATIO, median, algorithm),
        measurement_item(codes.SCT.Volume, vertebra.volume_mm3, CUBIC_MM),
        *companions.measurements(vertebra, vertebra.centroid_patient_mm, algorithm),
        *centroid_items(vertebra.centroid_patient_mm), *follow_up.level_items(vertebra.name),
    ) if m is not None]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=vertebra.tracking_uid,
                                                     identifier=_name(vertebra)),
        finding_type=codes.SCT.BoneMarrow,
        finding_sites=_level_sites(vertebra.level),
        time_point_context=follow_up.time_point,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(MARROW_PATTERN,
                                                             PATTERN_CODES[vertebra.pattern])],
    )


def _set_group(set_report: SetReport, sources: list[hd.sr.SourceImageForMeasurementGroup],
               tracking_uid: str, follow_up: FollowUp,
               ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The set as a whole: field strength, threshold, localisation, pattern, method, flags.
    No number over tissue: those live in the vertebra groups."""
    threshold = set_report.signal_loss_threshold_percent
    measurements = [m for m in (
        measurement_item(codes.DCM.MagneticFieldStrength, set_report.field_strength_t, TESLA),
        measurement_item(THRESHOLD, threshold, PERCENT),
    ) if m is not None]
    evaluations = [
        hd.sr.QualitativeEvaluation(MARROW_LOCALISATION, MARROW_LOCALISED
                                    if set_report.marrow.localised else MARROW_NOT_LOCALISED),
        hd.sr.QualitativeEvaluation(MARROW_PATTERN, PATTERN_CODES[set_report.pattern]),
    ]
    if set_report.fat_fraction_method in METHOD_CODES:
        evaluations.append(hd.sr.QualitativeEvaluation(
            FAT_FRACTION_METHOD, METHOD_CODES[set_report.fat_fraction_method]))
    evaluations += [hd.sr.QualitativeEvaluation(ANALYSIS_FLAG, FLAG_CODES[f])
                    for f in set_report.flags if f in FLAG_CODES]
    if threshold is None:
        evaluations.append(hd.sr.QualitativeEvaluation(THRESHOLD_EVALUATION, NO_THRESHOLD))
    if follow_up.comparison is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(PRIOR_PATTERN, PATTERN_CODES[
            follow_up.comparison["pattern"]["prior"]]))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid, identifier=f"Dixon set {set_report.key}"[:64]),
        finding_type=codes.SCT.BoneMarrow,
        time_point_context=follow_up.time_point,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=sources,
    )


def _focus_group(number: int, focus: FocusReport, mask: np.ndarray, sources: SourceSeries,
                 algorithm: hd.sr.AlgorithmIdentification, tracking_uid: str,
                 companions: CompanionImages, follow_up: FollowUp,
                 ) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """One focus: its outline on every slice, ratio-of-means numbers, category and margin."""
    regions = []
    for index in np.flatnonzero(mask.any(axis=(1, 2))):
        polygon = _outline(mask[index])
        if polygon is not None and len(polygon) >= 4:
            regions.append(hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polygon,
                source_image=_source_region(sources.planes[int(index)])))
    measurements = [m for m in (
        measurement_item(SIGNAL_LOSS, focus.signal_loss_percent, PERCENT, RATIO_OF_MEANS,
                     algorithm),
        measurement_item(SIR, focus.sir, RATIO, RATIO_OF_MEANS, algorithm),
        measurement_item(codes.DCM.FatFraction, focus.fat_fraction_percent, PERCENT,
                     codes.SCT.Mean, algorithm),
        measurement_item(codes.SCT.Volume, focus.volume_mm3, CUBIC_MM),
        measurement_item(codes.SCT.Area, focus.area_mm2, SQUARE_MM),
        *companions.measurements(focus, focus.centroid_patient_mm, algorithm),
        *centroid_items(focus.centroid_patient_mm),
    ) if m is not None]
    before, change = follow_up.focus_items(number - 1)
    measurements += before
    verdict = BELOW if focus.below_threshold else AT_OR_ABOVE
    evaluations = [hd.sr.QualitativeEvaluation(THRESHOLD_EVALUATION, verdict),
                   hd.sr.QualitativeEvaluation(FOCUS_CATEGORY, CATEGORY_CODES[focus.category])]
    if focus.margin in MARGIN_CODES:
        evaluations.append(hd.sr.QualitativeEvaluation(MARGIN, MARGIN_CODES[focus.margin]))
    if focus.fat_suppression is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(
            FAT_SUPPRESSION, FAT_SUPPRESSION_CODES[focus.fat_suppression]))
    evaluations += change
    where = f" in {focus.site}" if focus.vertebra else ""
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid,
                                                     identifier=f"Focus {number}{where}"),
        referenced_regions=regions,
        finding_type=codes.SCT.Lesion,
        finding_sites=[*_level_sites(focus.level), hd.sr.FindingSite(codes.SCT.BoneMarrow)],
        time_point_context=follow_up.time_point,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


@dataclass(frozen=True)
class RelatedReports:
    """Other reports an SR names: predecessors, the set's earlier reports (other settings,
    fewer images, no comparison yet) which it supersedes (Predecessor Documents Sequence);
    priors, the patient's earlier report it is compared with (Pertinent Other Evidence)."""

    predecessors: Sequence[Dataset] = ()
    priors: Sequence[Dataset] = ()


def build_sr(
    sources: SourceSeries,
    evidence: Sequence[Dataset],
    set_report: SetReport,
    focus_masks: Sequence[np.ndarray],
    parametric_maps: Sequence[Dataset],
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    series_description: str,
    uid_root: str,
    settings_digest: str = "",
    related: RelatedReports | None = None,
) -> Dataset:
    """The set's TID 1500 report: a group for the set, one per vertebra, one per focus.

    The run is named in every measurement's algorithm identification (version, and the digest
    of the settings that shaped it); related: the reports this one supersedes and the
    patient's earlier one it is compared with."""
    related = related or RelatedReports()
    predecessors, prior_reports = related.predecessors, related.priors
    tracking_root = derived_uid(uid_root, sop_uid, "tracking")
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(uid_root, "device", MANUFACTURER),
            name=MANUFACTURER, manufacturer_name=MANUFACTURER, model_name=MODEL_NAME,
        ),
    )
    observation = hd.sr.ObservationContext(observer_device_context=device)

    algorithm = hd.sr.AlgorithmIdentification(
        name=MODEL_NAME, version=ALGORITHM_VERSION,
        parameters=[f"settings digest {settings_digest}"] if settings_digest else None)
    group_sources = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
                     for ds in list(evidence) + list(parametric_maps)]
    follow_up = FollowUp(set_report)
    groups: list[Any] = [_set_group(set_report, group_sources,
                                    derived_uid(uid_root, tracking_root, "set"), follow_up)]
    companions = CompanionImages(set_report, evidence)
    groups += [_vertebra_group(vertebra, algorithm, companions, follow_up)
               for vertebra in set_report.vertebrae]
    groups += [_focus_group(number, focus, mask, sources, algorithm,
                            focus.tracking_uid or derived_uid(uid_root, tracking_root, "focus",
                                                              number), companions, follow_up)
               for number, (focus, mask) in enumerate(
                   zip(set_report.foci, focus_masks, strict=True), start=1)]
    groups += follow_up.resolved_groups(algorithm, lambda level: [
        *_level_sites(level), hd.sr.FindingSite(codes.SCT.BoneMarrow)])
    report = hd.sr.MeasurementReport(
        observation_context=observation,
        procedure_reported=codes.LN.MRIUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    content = report[0]
    with sr_content_taken_as_built(content):  # built for this report alone: no copy
        sr = hd.sr.Comprehensive3DSR(
            evidence=list(evidence) + list(parametric_maps) + list(prior_reports),
            content=content,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
            previous_versions=[p for p in predecessors if p.SOPInstanceUID != sop_uid] or None,
        )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = DicomSequence([scheme])  # type: ignore[assignment]
    stamp(sr, sources, series_description)
    for keyword in ("BodyPartExamined", "Laterality"):  # not part of the SR IODs
        if keyword in sr:
            del sr[keyword]
    return sr
