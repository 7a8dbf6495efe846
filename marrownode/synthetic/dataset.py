"""The building blocks of every synthetic object: deterministic UIDs, echo times, the
options of a study, the patient/study/frame-of-reference header, pixels and file meta."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
)

from marrownode.physics import fat_water_period_ms


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
    """What a synthetic study looks like: vendor style, field, noise, orientation, patient."""

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
    #: Enhanced MR only: where the functional groups go (synthetic/enhanced.py LAYOUTS).
    enhanced_layout: str = "shared"
    #: A second acquisition of the same series plan (the post-contrast twin): other series
    #: UIDs, words added to the descriptions, Contrast/Bolus Agent ('' leaves it out).
    series_tag: str = ""
    description_suffix: str = ""
    contrast_agent: str = ""
    series_time: str = ""


def base_dataset(options: StudyOptions) -> Dataset:
    """Patient, study, equipment and frame of reference: what every series of a study shares."""
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


def stored(image: np.ndarray) -> np.ndarray:
    """Signal as a scanner stores it: 12-bit unsigned integers."""
    stored: np.ndarray = np.clip(np.rint(image), 0, 4095).astype(np.uint16)
    return stored


def pixel_module(ds: Dataset, plane: np.ndarray) -> None:
    """The Image Pixel module for one plane or a stack of frames."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = plane.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = plane.tobytes()


def finish(ds: Dataset, sop_class: UID) -> Dataset:
    """The SOP class and the file meta: the object ready to write."""
    ds.SOPClassUID = sop_class
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds
