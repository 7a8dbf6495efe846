"""Parametric Map (float32, Real World Value Mapping in UCUM %): the standard quantitative map."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from marrownode.results.common import (
    SourceSeries,
    derive_dimension_organization,
    enhanced_identity,
    stamp,
)


def build_parametric_map(
    sources: SourceSeries,
    values: np.ndarray,
    *,
    label: str,
    explanation: str,
    value_range: tuple[float, float],
    series_uid: str,
    sop_uid: str,
    series_number: int,
    series_description: str,
    uid_root: str,
) -> Dataset:
    """A multi-frame PM registered to the in-phase stack; NaN (undefined) outside tissue."""
    if values.shape[0] != len(sources.planes):
        raise ValueError(f"map has {values.shape[0]} slices, source stack {len(sources.planes)}")
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=label[:16],
        lut_explanation=explanation[:64],
        unit=codes.UCUM.Percent,
        value_range=(float(value_range[0]), float(value_range[1])),
        slope=1.0,
        intercept=0.0,
    )
    first = sources.planes[0]
    pixel_measures = hd.PixelMeasuresSequence(
        pixel_spacing=first.pixel_spacing,
        slice_thickness=first.slice_thickness or 1.0,
    )
    orientation = hd.PlaneOrientationSequence(
        coordinate_system="PATIENT", image_orientation=first.orientation
    )
    positions = [
        hd.PlanePositionSequence(coordinate_system="PATIENT", image_position=p.position)
        for p in sources.planes
    ]
    low, high = value_range
    pm = hd.pm.ParametricMap(
        source_images=list(sources.datasets),
        pixel_array=values.astype(np.float32),
        **enhanced_identity(series_uid, series_number, sop_uid),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(window_center=(low + high) / 2, window_width=high - low)
        ],
        content_label=label[:16].upper().replace(" ", "_"),
        content_description=explanation[:64],
        pixel_measures=pixel_measures,
        plane_orientation=orientation,
        plane_positions=positions,
    )
    stamp(pm, sources, series_description)
    derive_dimension_organization(pm, uid_root)
    return pm
