"""Enhanced MR writers: one multi-frame object per study, as Philips writes mDIXON and a
dual-echo FFE; its functional groups shared or per frame as each vendor writes them (the
standard allows either for every group), or converted from a classic series (Legacy
Converted Enhanced MR, whose echo times and labels are in the unassigned converted
attributes)."""

from __future__ import annotations

import copy

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, EnhancedMRImageStorage

from marrownode.physics import GYROMAGNETIC_MHZ_PER_T
from marrownode.synthetic.dataset import (
    StudyOptions,
    base_dataset,
    echo_times_ms,
    finish,
    pixel_module,
    stored,
    synthetic_uid,
)
from marrownode.synthetic.geometry import geometry_for
from marrownode.synthetic.phantom import Phantom

LEGACY_CONVERTED_ENHANCED_MR = UID("1.2.840.10008.5.1.4.1.1.4.4")

#: Which functional groups each layout writes per frame (the others shared): "shared" puts
#: every group that does not vary in the shared item; Philips states pixel measures and
#: orientation per frame; Siemens XA states everything per frame; "legacy" is a classic
#: Siemens-labelled series converted to Legacy Converted Enhanced MR.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "shared": (),
    "philips": ("PixelMeasuresSequence", "PlaneOrientationSequence",
                "PixelValueTransformationSequence"),
    "siemens_xa": ("PixelMeasuresSequence", "PlaneOrientationSequence",
                   "PixelValueTransformationSequence", "MRModifierSequence"),
    "legacy": (),
}


def _frame_groups(origin: np.ndarray, k: int, echo_time: float,
                  frame_type_values: list[str]) -> Dataset:
    """One Enhanced MR per-frame functional groups item: position, echo, frame type, stack."""
    item = Dataset()
    position = Dataset()
    position.ImagePositionPatient = [round(float(v), 4) for v in origin]
    item.PlanePositionSequence = Sequence([position])
    echo = Dataset()
    echo.EffectiveEchoTime = echo_time
    item.MREchoSequence = Sequence([echo])
    frame_type = Dataset()
    frame_type.FrameType = frame_type_values
    item.MRImageFrameTypeSequence = Sequence([frame_type])
    content = Dataset()
    content.InStackPositionNumber = k + 1
    content.StackID = "1"
    item.FrameContentSequence = Sequence([content])
    return item


def _enhanced_header(options: StudyOptions, phantom: Phantom, key: str, description: str,
                     image_type: list[str]) -> tuple[Dataset, Dataset]:
    """The header of a synthetic Enhanced MR object and its shared functional groups item
    (pixel measures; a caller adds what its layout shares beyond that)."""
    ds = base_dataset(options)
    ds.SeriesInstanceUID = synthetic_uid(options.study_key, options.orientation, key, "series")
    ds.SOPInstanceUID = synthetic_uid(ds.SeriesInstanceUID, "instance")
    ds.SeriesNumber = options.series_number_start
    ds.SeriesDescription = description
    ds.InstanceNumber = 1
    ds.ImageType = image_type
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.AcquisitionDateTime = "20260101120000"
    ds.MagneticFieldStrength = options.field_strength_t
    ds.ImagingFrequency = round(GYROMAGNETIC_MHZ_PER_T * options.field_strength_t, 6)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = list(phantom.pixel_spacing_mm)
    measures.SliceThickness = phantom.slice_thickness_mm
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    return ds, shared


def _optional_groups(layout: str) -> dict[str, Dataset]:
    """The groups a vendor layout adds beyond the basic ones (identity rescale, no
    modifier), each as its item."""
    if layout == "shared":
        return {}
    transformation = Dataset()
    transformation.RescaleSlope, transformation.RescaleIntercept = 1, 0
    transformation.RescaleType = "US"
    groups = {"PixelValueTransformationSequence": transformation}
    if layout == "siemens_xa":
        modifier = Dataset()
        modifier.InversionRecovery, modifier.SpatialPresaturation = "NO", "NONE"
        modifier.ParallelAcquisition, modifier.PartialFourier = "NO", "NO"
        groups["MRModifierSequence"] = modifier
    return groups


def _place_groups(options: StudyOptions, shared: Dataset, per_frame: list[Dataset]) -> None:
    """Move each group of the layout's per-frame list from the shared item into every frame."""
    if options.enhanced_layout not in LAYOUTS:
        raise ValueError(f"unknown enhanced_layout {options.enhanced_layout!r}; choose from "
                         f"{', '.join(LAYOUTS)}")
    for keyword, item in _optional_groups(options.enhanced_layout).items():
        setattr(shared, keyword, Sequence([item]))
    for keyword in LAYOUTS[options.enhanced_layout]:
        if keyword not in shared:
            continue
        item = shared[keyword].value[0]
        for frame in per_frame:
            setattr(frame, keyword, Sequence([copy.deepcopy(item)]))
        del shared[keyword]


def _legacy(ds: Dataset, per_frame: list[Dataset], roles: list[tuple[str, float]]) -> None:
    """Legacy Converted Enhanced MR: no MR-specific frame groups; each frame's echo time and
    ImageType stay in its unassigned converted attributes, as a converter leaves them."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    for frame, (token, echo_time) in zip(per_frame, roles, strict=True):
        del frame.MREchoSequence
        del frame.MRImageFrameTypeSequence
        converted = Dataset()
        converted.EchoTime = echo_time
        converted.ImageType = ["ORIGINAL", "PRIMARY", "M", token, "NORM", "DIS2D"]
        frame.UnassignedPerFrameConvertedAttributesSequence = Sequence([converted])


def enhanced_mr(options: StudyOptions, phantom: Phantom) -> Dataset:
    """Enhanced MR as Philips writes mDIXON (all four contrasts in one multi-frame object,
    per-frame FrameType and echo time), its groups laid out as options.enhanced_layout says."""
    op_te, ip_te = echo_times_ms(options.field_strength_t, options.in_phase_first)
    images = phantom.echoes(snr=options.snr, seed=options.seed)
    geometry = geometry_for(options.orientation)
    ds, shared = _enhanced_header(options, phantom, "enh", "mDIXON enhanced",
                                  ["DERIVED", "PRIMARY", "DIXON", "MIXED"])
    ds.Manufacturer = "Philips"
    ds.SpectrallySelectedSuppression = "NONE"
    roles = (("water", "WATER", 0.0), ("fat", "FAT", 0.0), ("in_phase", "IN_PHASE", ip_te),
             ("opposed_phase", "OUT_OF_PHASE", op_te))
    orientation = Dataset()
    orientation.ImageOrientationPatient = [*geometry.row_dir, *geometry.col_dir]
    shared.PlaneOrientationSequence = Sequence([orientation])
    per_frame = []
    planes = []
    labels: list[tuple[str, float]] = []
    slices = phantom.labels.shape[0]
    for role, token, echo_time in roles:
        data = stored(images[role])
        for k in range(slices):
            origin = geometry.origin + k * phantom.slice_thickness_mm * geometry.normal
            per_frame.append(_frame_groups(origin, k, echo_time,
                                           ["DERIVED", "PRIMARY", "DIXON", token]))
            planes.append(data[k])
            labels.append(({"OUT_OF_PHASE": "OUT_PHASE"}.get(token, token), echo_time))
    _place_groups(options, shared, per_frame)
    if options.enhanced_layout == "legacy":
        _legacy(ds, per_frame, labels)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(planes)
    pixel_module(ds, np.stack(planes))
    return finish(ds, LEGACY_CONVERTED_ENHANCED_MR if options.enhanced_layout == "legacy"
                  else EnhancedMRImageStorage)


def enhanced_ffe(options: StudyOptions, phantom: Phantom) -> Dataset:
    """Philips Enhanced MR as an Ingenia writes a dual-echo FFE: one multi-frame object with
    magnitude and phase frames of both echoes, EchoPulseSequence GRADIENT, orientation per
    frame, no Dixon labels (the echo times are all there is)."""
    op_te, ip_te = echo_times_ms(options.field_strength_t, options.in_phase_first)
    images = phantom.echoes(snr=options.snr, seed=options.seed)
    geometry = geometry_for(options.orientation)
    ds, _ = _enhanced_header(options, phantom, "ffe", "T1_FFE_dual_echo",
                             ["ORIGINAL", "PRIMARY", "MIXED", "NONE"])
    ds.Manufacturer, ds.ManufacturerModelName = "Philips", "Ingenia Elition X"
    ds.EchoPulseSequence = "GRADIENT"
    ds.SpectrallySelectedSuppression = "NONE"
    phase = np.random.default_rng(options.seed).uniform(
        0, 4095, size=images["in_phase"].shape).astype(np.uint16)
    per_frame, planes = [], []
    for role, echo_time in (("opposed_phase", op_te), ("in_phase", ip_te)):
        magnitude = stored(images[role])
        for component, data in (("MAGNITUDE", magnitude), ("PHASE", phase)):
            for k in range(phantom.labels.shape[0]):
                origin = geometry.origin + k * phantom.slice_thickness_mm * geometry.normal
                item = _frame_groups(origin, k, echo_time,
                                     ["ORIGINAL", "PRIMARY", f"{component[0]}_FFE", "NONE"])
                item.MRImageFrameTypeSequence[0].ComplexImageComponent = component
                orientation = Dataset()
                orientation.ImageOrientationPatient = [*geometry.row_dir, *geometry.col_dir]
                item.PlaneOrientationSequence = Sequence([orientation])
                per_frame.append(item)
                planes.append(data[k])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(planes)
    pixel_module(ds, np.stack(planes))
    return finish(ds, EnhancedMRImageStorage)
