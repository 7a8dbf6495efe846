"""Derived grayscale MR maps: integer percent on the source geometry, previewable by any PACS.

One single-frame MR Image per slice, ImageType DERIVED\\SECONDARY, stored values are the percent
(no RescaleSlope on the MR IOD), a Real World Value Mapping says so, and the acquisition
attributes that hanging protocols match on (echo time and number, sequence name, acquisition
number) are removed so the map is never shown as a source echo.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.coding import Code
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, MRImageStorage

from marrownode.results.common import SourcePlane, SourceSeries, sibling_instance, stamp

#: Stored where the map is undefined (outside the body, air, void); declared as padding.
PIXEL_PADDING_VALUE = -32768

#: Stored values are whole percent (UCUM '%', meaning written as the code).
PERCENT = Code("%", "UCUM", "%")

#: Kept from the in-phase source: what a viewer needs to place and label the image.
_KEEP_FROM_SOURCE = (
    "FrameOfReferenceUID", "PositionReferenceIndicator", "PatientPosition", "Laterality",
    "MagneticFieldStrength", "BodyPartExamined",
)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _source_item(plane: SourcePlane, purpose: str = "") -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = plane.sop_class_uid
    item.ReferencedSOPInstanceUID = plane.sop_instance_uid
    if plane.frame_number is not None:
        item.ReferencedFrameNumber = plane.frame_number
    item.PurposeOfReferenceCodeSequence = Sequence(
        [_code("121322", "DCM", "Source image for image processing operation")]
    )
    return item


def build_derived_mr_series(
    sources: SourceSeries,
    values: np.ndarray,
    *,
    label: str,
    explanation: str,
    value_range: tuple[int, int],
    series_uid: str,
    sop_uids: list[str],
    series_number: int,
    series_description: str,
    window: tuple[float, float] | None = None,
) -> Iterator[Dataset]:
    """One MR Image per slice with stored value = round(percent); PixelPaddingValue where the
    map is undefined (outside the body, air, signal void).

    A generator: the caller writes each slice before the next is built (bounded memory)."""
    if values.shape[0] != len(sources.planes) or len(sop_uids) != len(sources.planes):
        raise ValueError("one SOP Instance UID and one map slice per source plane are needed")
    low, high = value_range
    stored = stored_percent(values, low, high)
    # The slices of a series differ only in identity, geometry, references and pixels.
    template = _series_template(sources, stored.shape[1:], label, explanation, value_range,
                                series_uid, series_number, series_description, sop_uids[0],
                                window)
    for index, (plane, sop_uid) in enumerate(zip(sources.planes, sop_uids, strict=True)):
        yield sibling_instance(
            template, sop_uid,
            InstanceNumber=index + 1,
            ImagePositionPatient=list(plane.position),
            ImageOrientationPatient=list(plane.orientation),
            PixelSpacing=list(plane.pixel_spacing),
            SliceThickness=plane.slice_thickness or None,
            PixelData=stored[index].tobytes(),
            SourceImageSequence=Sequence(
                [_source_item(plane), _source_item(sources.opposed_planes[index])]),
        )


def stored_percent(values: np.ndarray, low: int, high: int) -> np.ndarray:
    """round(percent) within [low, high] as int16, PIXEL_PADDING_VALUE where undefined: in
    place on one rounded copy (four passes over the stack, where np.where over nan_to_num's
    copy took eleven)."""
    finite = np.isfinite(values)
    rounded = np.rint(values)
    np.clip(rounded, low, high, out=rounded)
    with np.errstate(invalid="ignore"):  # NaN has no int16; it is padding below
        stored: np.ndarray = rounded.astype(np.int16)
    stored[~finite] = PIXEL_PADDING_VALUE
    return stored


def _series_template(
    sources: SourceSeries,
    shape: tuple[int, ...],
    label: str,
    explanation: str,
    value_range: tuple[int, int],
    series_uid: str,
    series_number: int,
    series_description: str,
    sop_uid: str,
    window: tuple[float, float] | None,
) -> Dataset:
    """Everything the slices of one map series share (each slice is a sibling of it)."""
    low, high = value_range
    reference = sources.reference
    ds = Dataset()
    for keyword in _KEEP_FROM_SOURCE:
        if keyword in reference:
            ds[keyword] = copy.deepcopy(reference[keyword])
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.EchoTime = None  # type 2: present but empty — not an echo
    ds.EchoTrainLength = None
    ds.ScanningSequence = reference.get("ScanningSequence", "GR")
    ds.SequenceVariant = reference.get("SequenceVariant", "NONE")
    ds.ScanOptions = reference.get("ScanOptions", "")
    ds.MRAcquisitionType = reference.get("MRAcquisitionType", "")
    ds.RepetitionTime = reference.get("RepetitionTime", None)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    centre, width = window or ((low + high) / 2, high - low)
    ds.WindowCenter = centre
    ds.WindowWidth = width
    ds.PixelPaddingValue = PIXEL_PADDING_VALUE
    ds.WindowCenterWidthExplanation = f"{label} %"
    ds.RealWorldValueMappingSequence = Sequence([hd.pm.RealWorldValueMapping(
        lut_label=label[:16], lut_explanation=explanation[:64], unit=PERCENT,
        value_range=(int(low), int(high)), slope=1.0, intercept=0.0)])
    ds.DerivationDescription = (f"{explanation}; stored value = percent, "
                                f"{PIXEL_PADDING_VALUE} where undefined")[:1024]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    stamp(ds, sources, series_description)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds
