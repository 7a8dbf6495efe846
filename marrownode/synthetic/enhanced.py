"""Enhanced MR writers: one multi-frame object per study, as Philips writes mDIXON and a
dual-echo FFE."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    EnhancedMRImageStorage,
)

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


def enhanced_mr(options: StudyOptions, phantom: Phantom) -> Dataset:
    """Philips-style Enhanced MR: one multi-frame object, per-frame FrameType and echo time."""
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
    slices = phantom.labels.shape[0]
    for role, token, echo_time in roles:
        data = stored(images[role])
        for k in range(slices):
            origin = geometry.origin + k * phantom.slice_thickness_mm * geometry.normal
            per_frame.append(_frame_groups(origin, k, echo_time,
                                           ["DERIVED", "PRIMARY", "DIXON", token]))
            planes.append(data[k])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(planes)
    pixel_module(ds, np.stack(planes))
    return finish(ds, EnhancedMRImageStorage)


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
