"""Reading request objects into regions in patient coordinates.

SR (TID 1500 planar ROIs, 2D image regions or 3D), GSPS graphic annotations and SEG segments.
2D coordinates are DICOM image coordinates (column, row; the top left corner of the top left
pixel is 0,0, so a pixel centre is at +0.5), turned into patient coordinates with the
referenced image's position, orientation and spacing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from marrownode.vocabulary.anatomy import VERTEBRA_CODES

SR_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
})
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def request_kind(sop_class_uid: str) -> str | None:
    """'sr', 'gsps' or 'seg' for the SOP classes that can carry a request, else None."""
    if sop_class_uid in SR_CLASSES:
        return "sr"
    return {GSPS_CLASS: "gsps", SEG_CLASS: "seg"}.get(sop_class_uid)


@dataclass(frozen=True)
class ImagePlane:
    """Where an image (or one frame) lies: first pixel centre, directions, spacing."""

    position: np.ndarray  # (3,) centre of the first pixel
    row_direction: np.ndarray  # (3,) along a row: increasing column
    column_direction: np.ndarray  # (3,) along a column: increasing row
    spacing: tuple[float, float]  # (between rows, between columns) in mm

    def to_patient(self, column_row: np.ndarray) -> np.ndarray:
        """Patient coordinates of image coordinates (column, row), corner convention."""
        column_row = np.asarray(column_row, dtype=np.float64).reshape(-1, 2) - 0.5
        result: np.ndarray = (self.position + column_row[:, :1] * self.spacing[1]
                              * self.row_direction
                              + column_row[:, 1:] * self.spacing[0] * self.column_direction)
        return result


#: (SOP Instance UID, frame number or None) -> the plane, or None when the node lacks it.
PlaneLookup = Callable[[str, int | None], ImagePlane | None]


@dataclass(frozen=True)
class Region:
    """One region to measure."""

    label: str
    tracking_uid: str
    graphic_type: str  # POLYGON, POLYLINE, ELLIPSE, CIRCLE, POINT, or MASK (segment voxels)
    points_mm: np.ndarray  # (N, 3) patient coordinates
    frame_of_reference_uid: str = ""
    source_sop_instance_uid: str = ""  # the image it was drawn on ("" for 3D and masks)
    source_sop_class_uid: str = ""
    pixel_points: np.ndarray | None = None  # the 2D graphic data as drawn, for the answer
    segment_number: int | None = None
    vertebra: str | None = None  # "L3" for a segment coded as a vertebra (CID 7603)


@dataclass
class MeasurementRequest:
    """A request object and what could be read from it."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    kind: str
    regions: list[Region] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)  # label + reason

    def refuse(self, label: str, reason: str) -> None:
        """Record a region that cannot be measured, with the reason."""
        self.problems.append({"label": label, "reason": reason})


def read_request(dataset: Dataset, plane_of: PlaneLookup,
                 tracking_uid: Callable[[str], str]) -> MeasurementRequest:
    """The regions of one request object. tracking_uid(label) makes a UID for regions that
    came without one (GSPS annotations, for instance)."""
    kind = request_kind(str(dataset.SOPClassUID))
    request = MeasurementRequest(str(dataset.SOPInstanceUID), str(dataset.SOPClassUID),
                                 str(dataset.SeriesInstanceUID), kind or "")
    if kind == "sr":
        _read_sr(dataset, plane_of, request)
    elif kind == "gsps":
        _read_gsps(dataset, plane_of, request, tracking_uid)
    elif kind == "seg":
        _read_seg(dataset, request, tracking_uid)
    return request


def _read_sr(dataset: Dataset, plane_of: PlaneLookup, request: MeasurementRequest) -> None:
    try:
        document = hd.sr.Comprehensive3DSR.from_dataset(dataset, copy=False) if str(
            dataset.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.34" else (
            hd.sr.ComprehensiveSR.from_dataset(dataset, copy=False) if str(
                dataset.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.33"
            else hd.sr.EnhancedSR.from_dataset(dataset, copy=False))
        groups = document.content.get_planar_roi_measurement_groups()
    except (AttributeError, ValueError, TypeError, KeyError) as exc:
        request.refuse("(document)", f"not a TID 1500 measurement report: {exc}")
        return
    for number, group in enumerate(groups, start=1):
        identifier = group.tracking_identifier or f"ROI {number}"
        uid = str(group.tracking_uid or "")
        roi = group.roi
        if roi is None:
            request.refuse(identifier, "no image region (a segmentation reference?)")
            continue
        try:
            _add_roi(roi, identifier, uid, plane_of, request)
        except (AttributeError, ValueError, TypeError, IndexError, KeyError) as exc:
            request.refuse(identifier, f"region not readable ({type(exc).__name__})")


def _add_roi(roi: Any, label: str, uid: str, plane_of: PlaneLookup,
             request: MeasurementRequest) -> None:
    graphic_type = str(roi.graphic_type.value if hasattr(roi.graphic_type, "value")
                       else roi.graphic_type).upper()
    data = np.asarray(roi.value, dtype=np.float64)
    if isinstance(roi, hd.sr.ImageRegion3D):
        frame_of_reference = str(roi.get("ReferencedFrameOfReferenceUID", "")
                                 or roi.get("FrameOfReferenceUID", ""))
        request.regions.append(Region(label, uid, graphic_type, data.reshape(-1, 3),
                                      frame_of_reference))
        return
    # The image it was drawn on: the SELECTED FROM child of the SCOORD content item.
    reference = roi.ContentSequence[0].ReferencedSOPSequence[0]
    sop_uid = str(reference.ReferencedSOPInstanceUID)
    frames = reference.get("ReferencedFrameNumber")
    frame = int(frames if not isinstance(frames, list | tuple) else frames[0]) if frames else None
    plane = plane_of(sop_uid, frame)
    if plane is None:
        request.refuse(label, f"drawn on image {sop_uid}, which the node does not have")
        return
    pixels = data.reshape(-1, 2)
    request.regions.append(Region(label, uid, graphic_type, plane.to_patient(pixels),
                                  source_sop_instance_uid=sop_uid,
                                  source_sop_class_uid=str(reference.ReferencedSOPClassUID),
                                  pixel_points=pixels))


def _read_gsps(dataset: Dataset, plane_of: PlaneLookup, request: MeasurementRequest,
               tracking_uid: Callable[[str], str]) -> None:
    number = 0
    for annotation in dataset.get("GraphicAnnotationSequence", []):
        texts = [str(t.get("UnformattedTextValue", "")) for t in
                 annotation.get("TextObjectSequence", [])]
        layer = str(annotation.get("GraphicLayer", ""))
        images = annotation.get("ReferencedImageSequence") or dataset.get(
            "ReferencedSeriesSequence", [Dataset()])[0].get("ReferencedImageSequence", [])
        for graphic in annotation.get("GraphicObjectSequence", []):
            number += 1
            label = (texts[0] if texts and texts[0] else layer or "annotation") + (
                f" {number}" if not texts else "")
            graphic_type = str(graphic.GraphicType).upper()
            if graphic_type == "POLYLINE" and graphic.get("GraphicFilled", "N") != "Y" and (
                    not _closed(graphic.GraphicData)):
                request.refuse(label, "an open polyline encloses no region")
                continue
            if str(graphic.get("GraphicAnnotationUnits", "PIXEL")).upper() != "PIXEL":
                request.refuse(label, "display-relative coordinates cannot be placed")
                continue
            if not images:
                request.refuse(label, "the annotation names no image")
                continue
            image = images[0]
            sop_uid = str(image.ReferencedSOPInstanceUID)
            frames = image.get("ReferencedFrameNumber")
            frame = int(frames[0] if isinstance(frames, list | tuple) else frames) if frames \
                else None
            plane = plane_of(sop_uid, frame)
            if plane is None:
                request.refuse(label, f"drawn on image {sop_uid}, which the node does not have")
                continue
            pixels = np.asarray(graphic.GraphicData, dtype=np.float64).reshape(-1, 2)
            label = str(graphic.get("TrackingID", "")) or label
            request.regions.append(Region(
                label, str(graphic.get("TrackingUID", "")) or tracking_uid(
                    f"{request.sop_instance_uid}|{number}"), graphic_type,
                plane.to_patient(pixels), source_sop_instance_uid=sop_uid,
                source_sop_class_uid=str(image.ReferencedSOPClassUID), pixel_points=pixels))


def _closed(data: Any) -> bool:
    points = np.asarray(data, dtype=np.float64).reshape(-1, 2)
    return len(points) > 2 and bool(np.allclose(points[0], points[-1]))


def _read_seg(dataset: Dataset, request: MeasurementRequest,
              tracking_uid: Callable[[str], str]) -> None:
    shared = dataset.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    frames = dataset.pixel_array.reshape(-1, int(dataset.Rows), int(dataset.Columns))
    fractional = str(dataset.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL"
    threshold = (float(dataset.get("MaximumFractionalValue", 255)) / 2.0) if fractional else 0
    points: dict[int, list[np.ndarray]] = {}
    for frame, item in zip(frames, dataset.PerFrameFunctionalGroupsSequence, strict=False):
        identification = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence")  # shared when there is one segment
        segment = int(identification[0].ReferencedSegmentNumber)
        plane = ImagePlane(np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float),
                           orientation[:3], orientation[3:], (spacing[0], spacing[1]))
        rows, columns = np.nonzero(frame > threshold)
        if rows.size:
            points.setdefault(segment, []).append(
                plane.to_patient(np.stack([columns + 0.5, rows + 0.5], axis=1)))
    for description in dataset.SegmentSequence:
        number = int(description.SegmentNumber)
        label = str(description.get("SegmentLabel", f"segment {number}"))
        uid = str(description.get("TrackingUID", "")) or tracking_uid(
            f"{request.sop_instance_uid}|segment|{number}")
        if number not in points:
            request.refuse(label, "the segment is empty")
            continue
        request.regions.append(Region(label, uid, "MASK", np.concatenate(points[number]),
                                      str(dataset.get("FrameOfReferenceUID", "")),
                                      segment_number=number, vertebra=_vertebra(description)))


def _vertebra(description: Dataset) -> str | None:
    """The vertebra a segment is coded as (SNOMED CT, CID 7603), or None."""
    for code in description.get("SegmentedPropertyTypeCodeSequence", []):
        if str(code.get("CodingSchemeDesignator", "")) in ("SCT", "SRT", "SNM3") and (
                str(code.get("CodeValue", "")) in VERTEBRA_CODES):
            return VERTEBRA_CODES[str(code.CodeValue)]
    return None
