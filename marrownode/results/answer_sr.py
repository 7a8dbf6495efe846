"""The answer to a measurement request: a TID 1500 SR whose measurement groups carry the
requester's tracking identifiers and UIDs, the region as drawn, the numbers and the verdict,
with the request object and the measured images as evidence."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from marrownode import ALGORITHM_VERSION, __version__
from marrownode.results.common import (
    MANUFACTURER,
    MODEL_NAME,
    copy_patient_study,
    creation_date_time,
)
from marrownode.results.sr import (
    AT_OR_ABOVE,
    BELOW,
    CATEGORY_CODES,
    CUBIC_MM,
    FAT_FRACTION_METHOD,
    METHOD_CODES,
    PERCENT,
    RATIO,
    RATIO_OF_MEANS,
    SCHEME,
    SIGNAL_LOSS,
    SIR,
    SQUARE_MM,
    THRESHOLD_EVALUATION,
    measurement_item,
)
from marrownode.uids import derived_uid
from marrownode.vocabulary import FocusCategory, RegionRefusal

EXPECTED = Code("MN204", SCHEME, "Expected signal loss: fat demonstrated")
NOT_MEASURED = Code("MN205", SCHEME, "Not measured")
MEASUREMENT_STATUS = Code("MN206", SCHEME, "Measurement status")
NO_DIXON_SET = Code("MN207", SCHEME, "No in-/opposed-phase set in the study")
NOT_PLACED = Code("MN208", SCHEME, "Region not on the in-/opposed-phase slices")
REGION_CATEGORY = Code("MN209", SCHEME, "Region category")
_CATEGORIES = {**CATEGORY_CODES, FocusCategory.EXPECTED_SIGNAL_LOSS: EXPECTED}
_GRAPHIC_2D = {"POLYLINE", "CIRCLE", "ELLIPSE", "POINT", "MULTIPOINT"}


def _group(measurement: dict[str, Any], request_uid: str, uid_root: str,
           algorithm: hd.sr.AlgorithmIdentification,
           source_images: Sequence[hd.sr.SourceImageForMeasurementGroup]) -> Any:
    tracking = hd.sr.TrackingIdentifier(
        uid=measurement["tracking_uid"] or derived_uid(uid_root, request_uid,
                                                       measurement["label"]),
        identifier=measurement["label"][:64] or "ROI")
    if "reason" in measurement:  # could not be measured: say why
        reason = (NO_DIXON_SET if measurement["reason"] == RegionRefusal.NO_DIXON_SET
                  else NOT_PLACED)
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, source_images=list(source_images) or None,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(MEASUREMENT_STATUS, reason)])
    values = [m for m in (
        measurement_item(SIGNAL_LOSS, measurement["signal_loss_percent"], PERCENT, RATIO_OF_MEANS,
                     algorithm),
        measurement_item(SIR, measurement["sir"], RATIO, RATIO_OF_MEANS, algorithm),
        measurement_item(codes.DCM.FatFraction, measurement["fat_fraction_percent"], PERCENT,
                     codes.SCT.Mean, algorithm),
        measurement_item(codes.SCT.Area, measurement.get("area_mm2"), SQUARE_MM),
        measurement_item(codes.SCT.Volume, measurement.get("volume_mm3"), CUBIC_MM),
    ) if m is not None]
    evaluations = [hd.sr.QualitativeEvaluation(
        REGION_CATEGORY, _CATEGORIES[measurement["category"]])]
    if measurement["below_threshold"] is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(
            THRESHOLD_EVALUATION, BELOW if measurement["below_threshold"] else AT_OR_ABOVE))
    if measurement["fat_fraction_method"] in METHOD_CODES:
        evaluations.append(hd.sr.QualitativeEvaluation(
            FAT_FRACTION_METHOD, METHOD_CODES[measurement["fat_fraction_method"]]))
    drawn = measurement.get("drawn")
    if drawn is not None and drawn["graphic_type"] in _GRAPHIC_2D:
        region = hd.sr.ImageRegion(
            graphic_type=drawn["graphic_type"],
            graphic_data=np.asarray(drawn["pixel_points"], dtype=np.float64),
            source_image=hd.sr.SourceImageForRegion(drawn["sop_class_uid"],
                                                    drawn["sop_instance_uid"]))
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_region=region,
            finding_sites=[hd.sr.FindingSite(codes.SCT.BoneMarrow)],
            measurements=values, qualitative_evaluations=evaluations)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, source_images=list(source_images) or None,
        finding_sites=[hd.sr.FindingSite(codes.SCT.BoneMarrow)],
        measurements=values, qualitative_evaluations=evaluations)


def build_answer_sr(request: Dataset, measurements: Sequence[dict[str, Any]],
                    evidence: Sequence[Dataset], *,
                    series_uid: str, sop_uid: str, series_number: int, uid_root: str,
                    settings_digest: str) -> Dataset:
    """One answer per request object, in the request's study (its patient and study modules
    copied from the request); evidence: the images measured on and drawn on."""
    algorithm = hd.sr.AlgorithmIdentification(
        name=MODEL_NAME, version=ALGORITHM_VERSION,
        parameters=[f"settings digest {settings_digest}"])
    source_images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
                     for ds in evidence if "Rows" in ds][:2]
    groups = [_group(m, str(request.SOPInstanceUID), uid_root, algorithm, source_images)
              for m in measurements]
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(uid_root, "device", MANUFACTURER), name=MANUFACTURER,
            manufacturer_name=MANUFACTURER, model_name=MODEL_NAME))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.MRIUnspecifiedBodyRegion, imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[request, *evidence], content=report[0], series_instance_uid=series_uid,
        series_number=series_number, sop_instance_uid=sop_uid, instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False)
    _stamp(sr, request)
    for keyword in ("BodyPartExamined", "Laterality"):
        if keyword in sr:
            del sr[keyword]
    return sr


def _stamp(sr: Dataset, request: Dataset) -> None:
    """When it was made, by what, and the request's patient and study modules."""
    date, time = creation_date_time(datetime.now())
    for prefix in ("InstanceCreation", "Content", "Series"):
        setattr(sr, f"{prefix}Date", date)
        setattr(sr, f"{prefix}Time", time)
    sr.ManufacturerModelName, sr.SoftwareVersions = MODEL_NAME, __version__
    sr.SeriesDescription = "marrownode measurements of your regions"
    copy_patient_study(sr, request)
