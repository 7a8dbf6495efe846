"""Synthetic MR studies labelled the way each vendor labels Dixon outputs (docs/domain.md §3).

The styles are data in styles.py, Enhanced MR in enhanced.py, the shared building blocks in
dataset.py; this module assembles studies and the extra series of an exam.

These are *inputs* for the demo, the tests and the benchmarks: they imitate what scanners send,
with the phantom's known truth in the pixels. Results are built elsewhere (results/).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    MRImageStorage,
)

from marrownode.physics import GYROMAGNETIC_MHZ_PER_T
from marrownode.synthetic.anatomy import default_phantom
from marrownode.synthetic.dataset import (
    StudyOptions,
    base_dataset,
    echo_times_ms,
    finish,
    pixel_module,
    stored,
    synthetic_uid,
)
from marrownode.synthetic.enhanced import enhanced_ffe, enhanced_mr
from marrownode.synthetic.geometry import Geometry, geometry_for
from marrownode.synthetic.phantom import Phantom
from marrownode.synthetic.styles import STYLES, echo_number, series_plans

__all__ = ["STYLES", "StudyOptions", "build_study", "compress", "echo_times_ms", "extra_series",
           "synthetic_uid", "write_datasets"]


def build_study(options: StudyOptions | None = None,
                phantom: Phantom | None = None) -> list[Dataset]:
    """All instances of one synthetic Dixon study in the given vendor style."""
    options = options or StudyOptions()
    phantom = phantom or default_phantom(options.orientation)
    if options.style == "philips_enhanced":
        return [enhanced_mr(options, phantom)]
    if options.style == "philips_enhanced_ffe":
        return [enhanced_ffe(options, phantom)]
    images = phantom.echoes(snr=options.snr, seed=options.seed)
    geometry = _grid_geometry(phantom, options.orientation)
    slices = phantom.labels.shape[0]
    geometry.origin = geometry.origin + (
        options.station * slices * phantom.slice_thickness_mm * geometry.normal)
    base = base_dataset(options)
    frequency = GYROMAGNETIC_MHZ_PER_T * options.field_strength_t
    datasets: list[Dataset] = []
    for number, plan in enumerate(series_plans(options), start=options.series_number_start):
        series_uid = synthetic_uid(options.study_key, options.orientation, plan.key, "series",
                                   options.station, *filter(None, [options.series_tag]))
        instance = 0
        for role, echo_time, image_type, private in plan.images:
            data = stored(images[role]) if role != "fat_fraction" else stored(
                100 * images["fat"] / np.maximum(images["in_phase"], 1e-6)
            )
            for k in range(slices):
                instance += 1
                ds = copy.deepcopy(base)
                ds.SeriesInstanceUID = series_uid
                ds.SeriesNumber = number
                _label_series(ds, plan.description, options)
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
                ds.EchoNumbers = echo_number(plan, role)
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
                pixel_module(ds, data[k])
                datasets.append(finish(ds, MRImageStorage))
    return datasets


def _grid_geometry(phantom: Phantom, orientation: str) -> Geometry:
    """Where the phantom's grid lies: its own geometry when it has one, else the plane's."""
    own = getattr(phantom, "geometry", None)
    if own is None:
        return geometry_for(orientation)
    return Geometry(own.row_dir.copy(), own.col_dir.copy(), own.origin.copy())


def _label_series(ds: Dataset, description: str, options: StudyOptions) -> None:
    """Description and protocol (with the options' suffix), contrast agent, series time."""
    ds.SeriesDescription = description + options.description_suffix
    ds.ProtocolName = description + options.description_suffix
    if options.contrast_agent:
        ds.ContrastBolusAgent = options.contrast_agent
    if options.series_time:
        ds.SeriesTime = options.series_time


def extra_series(options: StudyOptions, kind: str, phantom: Phantom | None = None) -> list[Dataset]:
    """Non-Dixon series a real exam also holds: 'fatsat_t1' (GR, TE 4.2 ms, FS), 'stir', 't2'."""
    phantom = phantom or default_phantom(options.orientation)
    base = base_dataset(options)
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
    data = stored(data)
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
        pixel_module(ds, data[k])
        out.append(finish(ds, MRImageStorage))
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
