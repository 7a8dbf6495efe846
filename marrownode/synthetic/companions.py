"""The series a spine protocol acquires beside the Dixon pair, from the same anatomy: the
post-contrast Dixon twin and a STIR on its own slice grid (synthetic/lumbar.py's phantom).

Truth per tissue, from the physics (docs/companions.md):
- Gadolinium shortens T1: on a T1 water image a tissue's water signal rises by its
  enhancement. Normal adult marrow enhances by about a quarter (red marrow more), metastases
  and Modic type 1 oedema by roughly their signal again, a fatty haemangioma a little, the
  disc's nucleus not at all; vessels most.
- STIR nulls fat and weights water by T2: marrow, three-quarters fat, is dark; water-rich
  lesions, oedema, discs and CSF are bright; a fatty haemangioma is as dark as fat.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

from marrownode.physics import GYROMAGNETIC_MHZ_PER_T
from marrownode.synthetic.anatomy import ANATOMY_TISSUES
from marrownode.synthetic.dataset import (
    StudyOptions,
    base_dataset,
    finish,
    pixel_module,
    stored,
    synthetic_uid,
)
from marrownode.synthetic.geometry import geometry_for
from marrownode.synthetic.lumbar import (
    FIELD_CENTRE_MM,
    LUMBAR_GRIDS,
    LumbarPhantom,
    _sample,
    column,
    sample_grid,
)
from marrownode.synthetic.studies import build_study

#: Rise of the water signal after gadolinium, as a fraction (T1 water image).
ENHANCEMENT: dict[str, float] = {
    "marrow": 0.25, "lesion": 1.0, "fat_lesion": 0.3, "replaced_marrow": 0.9,
    "modic_1": 0.8, "modic_2": 0.1, "vein": 1.5, "aorta": 2.0, "muscle": 0.15,
    "annulus": 0.15, "disc": 0.0, "csf": 0.0, "cord": 0.0, "subcutaneous_fat": 0.1,
    "viscera": 0.5, "liver": 0.6, "kidney": 1.5, "yellow_marrow": 0.1,
}
#: STIR signal per unit of water (T2 weighting, fat nulled); flowing blood is void.
STIR_WATER_WEIGHT: dict[str, float] = {
    "marrow": 0.5, "lesion": 1.6, "fat_lesion": 0.8, "replaced_marrow": 1.6, "modic_1": 1.6,
    "modic_2": 0.5, "vein": 1.5, "aorta": 0.1, "muscle": 0.4, "annulus": 0.6, "disc": 2.0,
    "csf": 3.0, "cord": 1.2, "subcutaneous_fat": 0.3, "viscera": 1.0, "liver": 0.6,
    "kidney": 1.5, "yellow_marrow": 0.5, "lung": 0.5,
}
#: The STIR a lumbar protocol acquires: thinner slices, coarser pixels, its own positions.
STIR_GRID = ((13, 256, 256), 0.95, 3.3)
#: ... and its slab shifted by this much (mm, along its normal) from the Dixon's.
STIR_SHIFT_MM = 1.4


def enhancement_truth(tissue: str) -> float:
    """The tissue's enhancement on water images, percent."""
    return 100.0 * ENHANCEMENT.get(tissue, 0.0)


def stir_ratio_truth(tissue: str) -> float:
    """The tissue's STIR signal over normal marrow's."""
    def signal(name: str) -> float:
        return ANATOMY_TISSUES[name][0] * STIR_WATER_WEIGHT.get(name, 0.0)

    return signal(tissue) / signal("marrow")


def _table(values: dict[str, float], default: float = 0.0) -> np.ndarray:
    return np.array([values.get(name, default) for name in ANATOMY_TISSUES])


def post_contrast_twin(options: StudyOptions, phantom: LumbarPhantom, *,
                       agent: str = "Gadovist", suffix: str = " +C",
                       series_time: str = "121500") -> list[Dataset]:
    """The Dixon study acquired again after gadolinium: same grid and echoes, the water
    signal of each tissue raised by its enhancement (fat unchanged), its own series UIDs."""
    enhanced = replace(phantom, water=phantom.water * (1.0 + _table(ENHANCEMENT)[phantom.labels]))
    twin = replace(options, series_tag="post-contrast", description_suffix=suffix,
                   contrast_agent=agent, series_time=series_time, seed=options.seed + 11,
                   series_number_start=options.series_number_start + 20)
    return build_study(twin, enhanced)


def _grid_centre(orientation: str, grid: tuple[tuple[int, int, int], float, float]
                 ) -> np.ndarray:
    """The patient position of a grid's centre as build_study writes it."""
    geometry = geometry_for(orientation)
    (slices, rows, columns), pixel, thickness = grid
    centre: np.ndarray = (geometry.origin + geometry.normal * thickness * (slices - 1) / 2
                          + geometry.col_dir * pixel * (rows - 1) / 2
                          + geometry.row_dir * pixel * (columns - 1) / 2)
    return centre


def stir_series(options: StudyOptions, variant: str, *,
                grid: tuple[tuple[int, int, int], float, float] = STIR_GRID,
                shift_mm: float = STIR_SHIFT_MM, frame_of_reference_uid: str = "",
                description: str = "t2_tirm_sag", scale: float = 1000.0) -> list[Dataset]:
    """A sagittal STIR (TIRM, TI 160 ms) of the variant's lumbar spine on its own grid, in the
    Dixon study's patient coordinates (unless frame_of_reference_uid says otherwise)."""
    geometry = geometry_for("sagittal")
    centre = FIELD_CENTRE_MM + geometry.normal * shift_mm
    _, _, (labels, *_) = sample_grid(lambda x, y, z: _sample(x, y, z, variant, column(variant)),
                                     geometry, grid, centre, 1)
    water = _table({k: v[0] for k, v in ANATOMY_TISSUES.items()})
    signal = (water * _table(STIR_WATER_WEIGHT))[labels] * scale
    if options.snr:
        rng = np.random.default_rng(options.seed + 23)
        sigma = scale / options.snr
        signal = np.hypot(signal + rng.normal(0, sigma, signal.shape),
                          rng.normal(0, sigma, signal.shape))
    origin = (geometry.origin + _grid_centre("sagittal", LUMBAR_GRIDS["sagittal"])
              - _grid_centre("sagittal", grid) + geometry.normal * shift_mm)
    (slices, _, _), pixel, thickness = grid
    base = base_dataset(options)
    series_uid = synthetic_uid(options.study_key, "stir", frame_of_reference_uid, "series")
    data = stored(signal)
    out = []
    for k in range(slices):
        ds = copy.deepcopy(base)
        if frame_of_reference_uid:
            ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 60
        ds.SeriesDescription = description
        ds.ProtocolName = description
        ds.Manufacturer = "SIEMENS"
        ds.SOPInstanceUID = synthetic_uid(series_uid, k)
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]
        ds.ScanningSequence = ["SE", "IR"]
        ds.SequenceVariant = ["SK", "SP", "MP"]
        ds.ScanOptions = "IR"
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = 56.0
        ds.RepetitionTime = 3800.0
        ds.InversionTime = 160.0
        ds.EchoTrainLength = 13
        ds.MagneticFieldStrength = options.field_strength_t
        ds.ImagingFrequency = round(GYROMAGNETIC_MHZ_PER_T * options.field_strength_t, 6)
        ds.SliceThickness = thickness
        ds.PixelSpacing = [pixel, pixel]
        ds.ImageOrientationPatient = [*geometry.row_dir, *geometry.col_dir]
        position = origin + k * thickness * geometry.normal
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.SliceLocation = round(float(position @ geometry.normal), 4)
        pixel_module(ds, data[k])
        out.append(finish(ds, MRImageStorage))
    return out
