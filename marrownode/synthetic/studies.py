"""Synthetic MR studies labelled the way each vendor labels Dixon outputs (DICOM-NOTES §3).

These are *inputs* for the demo, the tests and the benchmarks: they imitate what scanners send,
with the phantom's known truth in the pixels. Results are built elsewhere (results/).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from marrownode.physics import GYROMAGNETIC_MHZ_PER_T, fat_water_period_ms
from marrownode.synthetic.anatomy import default_phantom
from marrownode.synthetic.geometry import geometry_for
from marrownode.synthetic.phantom import Phantom

STYLES = (
    "siemens",
    "siemens_xa",
    "ge_lava",
    "ge_idealiq",
    "philips_mdixon",
    "philips_enhanced",
    "philips_enhanced_ffe",
    "anonymised_dual_echo",
)


def synthetic_uid(*parts: object) -> UID:
    """Deterministic 2.25 UID so the same call makes the same study."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")


def echo_times_ms(field_strength_t: float, in_phase_first: bool = False) -> tuple[float, float]:
    """(opposed, in-phase) echo times at the first opposed/in-phase points of this field."""
    period = fat_water_period_ms(field_strength_t)
    if in_phase_first:
        return round(1.5 * period, 2), round(period, 2)
    return round(0.5 * period, 2), round(period, 2)


@dataclass(frozen=True)
class StudyOptions:
    style: str = "siemens"
    field_strength_t: float = 1.5
    snr: float | None = None
    in_phase_first: bool = False
    orientation: str = "sagittal"
    patient_name: str = "Doe^Jane"
    patient_id: str = "MN-0001"
    character_set: str = "ISO_IR 192"
    study_key: str = "study-1"
    seed: int = 0
    series_number_start: int = 1
    station: int = 0  # whole-body stations: each one further along the slice normal


def _base_dataset(options: StudyOptions) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = options.character_set
    ds.PatientName = options.patient_name
    ds.PatientID = options.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = synthetic_uid(options.study_key, "study")
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC" + hashlib.sha1(options.study_key.encode()).hexdigest()[:8]
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyDescription = "MRI LUMBAR SPINE"
    ds.Modality = "MR"
    ds.BodyPartExamined = "LSPINE"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = synthetic_uid(options.study_key, "for")
    ds.PositionReferenceIndicator = ""
    return ds


def _stored(image: np.ndarray) -> np.ndarray:
    stored: np.ndarray = np.clip(np.rint(image), 0, 4095).astype(np.uint16)
    return stored


def _pixel_module(ds: Dataset, plane: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = plane.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = plane.tobytes()


def _finish(ds: Dataset, sop_class: UID) -> Dataset:
    ds.SOPClassUID = sop_class
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


@dataclass(frozen=True)
class _SeriesPlan:
    """One series to emit: which images it holds and how they are labelled."""

    key: str
    description: str
    images: tuple[tuple[str, float, list[str], str | None], ...]  # role, TE, ImageType, private
    manufacturer: str
    scanning_sequence: str = "GR"
    scan_options: str = ""
    promise_count: bool = True


def _plans(options: StudyOptions) -> list[_SeriesPlan]:
    op_te, ip_te = echo_times_ms(options.field_strength_t, options.in_phase_first)
    style = options.style
    if style == "siemens":
        protocol = "t1_vibe_dixon_sag" if options.orientation == "sagittal" else "t1_vibe_dixon_tra"
        return [
            _SeriesPlan("op", f"{protocol}_opp", (("opposed_phase", op_te,
                        ["ORIGINAL", "PRIMARY", "M", "OUT_PHASE", "NORM", "DIS2D"], None),),
                        "SIEMENS"),
            _SeriesPlan("ip", f"{protocol}_in", (("in_phase", ip_te,
                        ["ORIGINAL", "PRIMARY", "M", "IN_PHASE", "NORM", "DIS2D"], None),),
                        "SIEMENS"),
            _SeriesPlan("f", f"{protocol}_F", (("fat", ip_te,
                        ["DERIVED", "PRIMARY", "M", "FAT", "NORM", "DIS2D"], None),), "SIEMENS"),
            _SeriesPlan("w", f"{protocol}_W", (("water", ip_te,
                        ["DERIVED", "PRIMARY", "M", "WATER", "NORM", "DIS2D"], None),),
                        "SIEMENS"),
        ]
    if style == "siemens_xa":
        def xa(role: str, token: str) -> tuple[str, float, list[str], None]:
            te = op_te if role == "opposed_phase" else ip_te
            return (role, te, ["DERIVED", "PRIMARY", "DIXON", token, "NORM", "MFSPLIT"], None)

        return [
            _SeriesPlan("op", "t1_vibe_dixon_opp_1", (xa("opposed_phase", "OPP_PHASE"),),
                        "Siemens Healthineers"),
            _SeriesPlan("ip", "t1_vibe_dixon_in_1", (xa("in_phase", "IN_PHASE"),),
                        "Siemens Healthineers"),
            _SeriesPlan("w", "t1_vibe_dixon_W_1", (xa("water", "WATER"),), "Siemens Healthineers"),
            _SeriesPlan("f", "t1_vibe_dixon_F_1", (xa("fat", "FAT"),), "Siemens Healthineers"),
        ]
    if style in ("ge_lava", "ge_idealiq"):
        def ge(role: str, token: str) -> tuple[str, float, list[str], None]:
            te = op_te if role == "opposed_phase" else ip_te
            return (role, te, ["DERIVED", "PRIMARY", "DIXON", token], None)

        plans = [
            _SeriesPlan("w", "WATER: Sag LAVA-Flex", (ge("water", "WATER"),), "GE MEDICAL SYSTEMS"),
            _SeriesPlan("f", "FAT: Sag LAVA-Flex", (ge("fat", "FAT"),), "GE MEDICAL SYSTEMS"),
            _SeriesPlan("ip", "InPhase: Sag LAVA-Flex", (ge("in_phase", "IN_PHASE"),),
                        "GE MEDICAL SYSTEMS"),
            _SeriesPlan("op", "OutPhase: Sag LAVA-Flex", (ge("opposed_phase", "OUT_PHASE"),),
                        "GE MEDICAL SYSTEMS"),
        ]
        if style == "ge_idealiq":
            plans.append(_SeriesPlan(
                "ff", "FatFrac: Sag IDEAL IQ",
                (("fat_fraction", 1.0, ["DERIVED", "PRIMARY", "DIXON", "FAT_FRACTION"], None),),
                "GE MEDICAL SYSTEMS"))
        return plans
    if style == "philips_mdixon":
        return [_SeriesPlan("mdixon", "sT1W_mDIXON_SAG", (
            ("water", ip_te, ["DERIVED", "PRIMARY", "W", "W", "DERIVED"], "W"),
            ("fat", ip_te, ["DERIVED", "PRIMARY", "F", "F", "DERIVED"], "F"),
            ("in_phase", ip_te, ["DERIVED", "PRIMARY", "IP", "IP", "DERIVED"], "IP"),
            ("opposed_phase", op_te, ["DERIVED", "PRIMARY", "OP", "OP", "DERIVED"], "OP"),
        ), "Philips")]
    if style == "anonymised_dual_echo":
        return [_SeriesPlan("dual", "", (
            ("opposed_phase", op_te, ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"], None),
            ("in_phase", ip_te, ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"], None),
        ), "", promise_count=False)]
    raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")


def _echo_number(plan: _SeriesPlan, role: str) -> int:
    roles = [image[0] for image in plan.images]
    return roles.index(role) + 1 if len(roles) > 1 else 1


def build_study(
    options: StudyOptions = StudyOptions(), phantom: Phantom | None = None
) -> list[Dataset]:
    """All instances of one synthetic Dixon study in the given vendor style."""
    phantom = phantom or default_phantom(options.orientation)
    if options.style == "philips_enhanced":
        return [_enhanced_mr(options, phantom)]
    if options.style == "philips_enhanced_ffe":
        return [_enhanced_ffe(options, phantom)]
    images = phantom.echoes(snr=options.snr, seed=options.seed)
    geometry = geometry_for(options.orientation)
    slices = phantom.labels.shape[0]
    geometry.origin = geometry.origin + (
        options.station * slices * phantom.slice_thickness_mm * geometry.normal)
    base = _base_dataset(options)
    frequency = GYROMAGNETIC_MHZ_PER_T * options.field_strength_t
    datasets: list[Dataset] = []
    for number, plan in enumerate(_plans(options), start=options.series_number_start):
        series_uid = synthetic_uid(options.study_key, options.orientation, plan.key, "series",
                                   options.station)
        instance = 0
        for role, echo_time, image_type, private in plan.images:
            data = _stored(images[role]) if role != "fat_fraction" else _stored(
                100 * images["fat"] / np.maximum(images["in_phase"], 1e-6)
            )
            for k in range(slices):
                instance += 1
                ds = copy.deepcopy(base)
                ds.SeriesInstanceUID = series_uid
                ds.SeriesNumber = number
                ds.SeriesDescription = plan.description
                ds.ProtocolName = plan.description
                ds.Manufacturer = plan.manufacturer
                ds.SOPInstanceUID = synthetic_uid(series_uid, role, k)
                ds.InstanceNumber = instance
                ds.ImageType = image_type
                ds.ScanningSequence = plan.scanning_sequence
                ds.SequenceVariant = "SP"
                ds.ScanOptions = plan.scan_options
                ds.MRAcquisitionType = "3D"
                ds.RepetitionTime = 7.0
                ds.EchoTime = echo_time
                ds.EchoTrainLength = 1
                ds.EchoNumbers = _echo_number(plan, role)
                ds.MagneticFieldStrength = options.field_strength_t
                ds.ImagingFrequency = round(frequency, 6)
                ds.FlipAngle = 10
                ds.AcquisitionNumber = 1
                if plan.promise_count:
                    ds.ImagesInAcquisition = slices * len(plan.images)
                ds.SliceThickness = phantom.slice_thickness_mm
                ds.PixelSpacing = list(phantom.pixel_spacing_mm)
                ds.ImageOrientationPatient = [*geometry.row_dir, *geometry.col_dir]
                position = geometry.origin + k * phantom.slice_thickness_mm * geometry.normal
                ds.ImagePositionPatient = [round(float(v), 4) for v in position]
                ds.SliceLocation = round(float(position @ geometry.normal), 4)
                if private is not None:
                    block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
                    block.add_new(0x11, "CS", private)
                _pixel_module(ds, data[k])
                datasets.append(_finish(ds, MRImageStorage))
    return datasets


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
    ds = _base_dataset(options)
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


def _enhanced_mr(options: StudyOptions, phantom: Phantom) -> Dataset:
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
        data = _stored(images[role])
        for k in range(slices):
            origin = geometry.origin + k * phantom.slice_thickness_mm * geometry.normal
            per_frame.append(_frame_groups(origin, k, echo_time,
                                           ["DERIVED", "PRIMARY", "DIXON", token]))
            planes.append(data[k])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(planes)
    _pixel_module(ds, np.stack(planes))
    return _finish(ds, EnhancedMRImageStorage)


def _enhanced_ffe(options: StudyOptions, phantom: Phantom) -> Dataset:
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
        magnitude = _stored(images[role])
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
    _pixel_module(ds, np.stack(planes))
    return _finish(ds, EnhancedMRImageStorage)


def extra_series(options: StudyOptions, kind: str, phantom: Phantom | None = None) -> list[Dataset]:
    """Non-Dixon series a real exam also holds: 'fatsat_t1' (GR, TE 4.2 ms, FS), 'stir', 't2'."""
    phantom = phantom or default_phantom(options.orientation)
    base = _base_dataset(options)
    geometry = geometry_for(options.orientation)
    images = phantom.echoes(snr=options.snr, seed=options.seed + 7)
    settings = {
        "fatsat_t1": ("Sag T1 FS", "GR", "FS", 4.2, images["water"],
                      ["ORIGINAL", "PRIMARY", "OTHER"]),
        "stir": ("Sag STIR", "IR", "", 60.0, images["water"] * 1.5, ["ORIGINAL", "PRIMARY", "M"]),
        "t2": ("Sag T2 TSE", "SE", "", 100.0, images["water"] + 0.6 * images["fat"],
               ["ORIGINAL", "PRIMARY", "M", "ND"]),
    }
    description, sequence, scan_options, echo_time, data, image_type = settings[kind]
    series_uid = synthetic_uid(options.study_key, options.orientation, kind, "series")
    data = _stored(data)
    out = []
    for k in range(phantom.labels.shape[0]):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 50 + list(settings).index(kind)
        ds.SeriesDescription = description
        ds.Manufacturer = "GE MEDICAL SYSTEMS"
        ds.SOPInstanceUID = synthetic_uid(series_uid, k)
        ds.InstanceNumber = k + 1
        ds.ImageType = image_type
        ds.ScanningSequence = sequence
        ds.SequenceVariant = "SK"
        ds.ScanOptions = scan_options
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = echo_time
        ds.RepetitionTime = 500.0
        ds.EchoTrainLength = 1
        ds.EchoNumbers = 1
        ds.MagneticFieldStrength = options.field_strength_t
        ds.ImagingFrequency = round(GYROMAGNETIC_MHZ_PER_T * options.field_strength_t, 6)
        ds.ImagesInAcquisition = phantom.labels.shape[0]
        ds.SliceThickness = phantom.slice_thickness_mm
        ds.PixelSpacing = list(phantom.pixel_spacing_mm)
        ds.ImageOrientationPatient = [*geometry.row_dir, *geometry.col_dir]
        position = geometry.origin + k * phantom.slice_thickness_mm * geometry.normal
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        _pixel_module(ds, data[k])
        out.append(_finish(ds, MRImageStorage))
    return out


def compress(datasets: Iterable[Dataset], transfer_syntax: str) -> list[Dataset]:
    """Re-encode datasets in a compressed transfer syntax (RLE, JPEG 2000, JPEG-LS lossless)."""
    out = []
    for ds in datasets:
        encoded = copy.deepcopy(ds)
        encoded.compress(transfer_syntax, generate_instance_uid=False)
        out.append(encoded)
    return out


def write_datasets(datasets: Iterable[Dataset], folder: Path) -> list[Path]:
    """Write each data set as <SOP Instance UID>.dcm under folder."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
