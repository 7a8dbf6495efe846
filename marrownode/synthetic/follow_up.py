"""A baseline and a follow-up lumbar study of one patient, from the anatomy of lumbar.py:
the same column with lesions that grow, stay, shrink, resolve or appear; the follow-up taken
another day in another frame of reference, the patient lying shifted and tilted on the table.

Truth comes with it: each lesion's level, its radius in each study and its status."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from marrownode.synthetic.anatomy import ANATOMY_CODES
from marrownode.synthetic.dataset import StudyOptions
from marrownode.synthetic.geometry import geometry_for
from marrownode.synthetic.lumbar import (
    FIELD_CENTRE_MM,
    LUMBAR_GRIDS,
    LumbarPhantom,
    _sample,
    column,
    sample_grid,
)
from marrownode.synthetic.segments import _local
from marrownode.synthetic.studies import build_study


@dataclass(frozen=True)
class TrackedLesion:
    """A metastasis at a level: its offset in the body (along and across the column, mm)
    and its radius at baseline and at follow-up (0: absent)."""

    level: str
    along_mm: float
    back_mm: float
    baseline_radius_mm: float
    follow_up_radius_mm: float
    status: str  # the truth: new, grown, stable, smaller, resolved


#: One lesion per status, each in its own body.
LESIONS = (
    TrackedLesion("L1", 0.0, 0.0, 4.5, 7.5, "grown"),
    TrackedLesion("L2", 2.0, -3.0, 0.0, 6.0, "new"),
    TrackedLesion("L3", 6.0, -7.0, 5.5, 5.5, "stable"),
    TrackedLesion("L4", 0.0, 0.0, 7.5, 4.5, "smaller"),
    TrackedLesion("L5", -5.0, 5.0, 6.0, 0.0, "resolved"),
)


def _rotation_about_x(degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def tracked_phantom(time_point: str, shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
                    tilt_degrees: float = 0.0, lesions: tuple[TrackedLesion, ...] = LESIONS,
                    supersample: int = 2) -> LumbarPhantom:
    """The column at 'baseline' or 'follow_up', moved by tilt (about the left-right axis)
    and shift in the scanner, on the sagittal lumbar grid."""
    segments = column("normal")
    by_name = {s.name: (number, s) for number, s in enumerate(segments, start=1)}
    rotation = _rotation_about_x(tilt_degrees)
    shift = np.asarray(shift_mm, dtype=float)
    masks: dict[str, np.ndarray] = {}
    levels: dict[str, str] = {}

    def sample(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
        # Where each scanner point lies in the patient's own anatomy: undo the motion.
        points = np.stack([x - shift[0], y - shift[1], z - shift[2]], axis=-1) @ rotation
        ax, ay, az = points[..., 0], points[..., 1], points[..., 2]
        labels, vertebra, posterior, _, _ = _sample(ax, ay, az, "normal", segments)
        for lesion in lesions:
            radius = (lesion.baseline_radius_mm if time_point == "baseline"
                      else lesion.follow_up_radius_mm)
            if radius <= 0:
                continue
            number, segment = by_name[lesion.level]
            u, v, w = _local(segment, ax, ay, az)
            mask = (((u - lesion.along_mm) ** 2 + (v - lesion.back_mm) ** 2 + w ** 2
                     <= radius ** 2) & (vertebra == number))
            labels[mask] = ANATOMY_CODES["lesion"]
            masks[lesion.level], levels[lesion.level] = mask, lesion.level
        return labels, vertebra, posterior

    _, pixel, thickness = LUMBAR_GRIDS["sagittal"]
    centre = FIELD_CENTRE_MM + shift
    water, fat, (labels, vertebra, posterior) = sample_grid(
        sample, geometry_for("sagittal"), LUMBAR_GRIDS["sagittal"], centre, supersample)
    return LumbarPhantom(
        labels=labels, pixel_spacing_mm=(pixel, pixel), slice_thickness_mm=thickness,
        water=water, fat=fat, vertebra=vertebra, posterior=posterior, lesion_masks=masks,
        orientation="sagittal", level_names={n: s.name for n, s in enumerate(segments, start=1)},
        lesion_levels=levels, variant=f"tracked_{time_point}")


def follow_up_pair(patient_id: str = "MN-FU-1", issuer: str = "HOSPITAL-A",
                   shift_mm: tuple[float, float, float] = (4.0, 12.0, -18.0),
                   tilt_degrees: float = -5.0, key: str = "fu", supersample: int = 2,
                   ) -> tuple[list[Dataset], list[Dataset]]:
    """The baseline (2026-01-05) and the follow-up (2026-07-06, shifted and tilted) studies
    of one patient, each with its own study and frame of reference UIDs."""
    studies = []
    for time_point, date, motion in (("baseline", "20260105", ((0.0, 0.0, 0.0), 0.0)),
                                     ("follow_up", "20260706", (shift_mm, tilt_degrees))):
        phantom = tracked_phantom(time_point, motion[0], motion[1], supersample=supersample)
        datasets = build_study(StudyOptions(style="siemens", patient_id=patient_id,
                                            study_key=f"{key}-{patient_id}-{time_point}"),
                               phantom)
        for dataset in datasets:
            dataset.StudyDate, dataset.StudyTime = date, "093000"
            dataset.SeriesDate = dataset.AcquisitionDate = dataset.ContentDate = date
            if issuer:
                dataset.IssuerOfPatientID = issuer
        studies.append(datasets)
    return studies[0], studies[1]
