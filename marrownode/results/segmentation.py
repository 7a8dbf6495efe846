"""DICOM Segmentation of the localised vertebral marrow: one segment per vertebral body and one
per vertebra's posterior elements, numbered V1... cranio-caudally like report.json and the SR.

A viewer shows which marrow every number came from; a radiologist who disagrees can correct it
in a segmentation editor and send it back.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from marrownode import ALGORITHM_VERSION
from marrownode.results.common import (
    MODEL_NAME,
    VERTEBRAL_BODY,
    SourceSeries,
    derive_dimension_organization,
    enhanced_identity,
    level_concept,
    stamp,
)
from marrownode.uids import derived_uid

VERTEBRA = codes.SCT.Vertebra
ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")


def build_vertebra_segmentation(
    sources: SourceSeries,
    bodies: np.ndarray,
    posterior: np.ndarray,
    labels: list[str],
    tracking_uids: list[str],
    *,
    levels: list[str | None] | None = None,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    series_description: str,
    uid_root: str,
) -> Dataset:
    """A binary SEG on the in-phase planes; segments without voxels are left out. A body's
    segment carries the vertebra's tracking UID (as in the SR); its posterior elements one
    derived from it. With levels, a named body is labelled by its level ("L3 vertebral body")
    and typed with its vertebra's code (CID 7603, the sacrum for S1...), as AI platforms code
    their vertebra segments."""
    algorithm = hd.AlgorithmIdentificationSequence(name=MODEL_NAME, version=ALGORITHM_VERSION,
                                                   family=codes.DCM.ArtificialIntelligence)
    label_map = np.zeros(bodies.shape, dtype=np.uint16)
    descriptions: list[hd.seg.SegmentDescription] = []
    names = levels or [None] * len(labels)
    for index, (label, level, tracking_uid) in enumerate(
            zip(labels, names, tracking_uids, strict=True), start=1):
        body_type = level_concept(level) or VERTEBRAL_BODY
        label = level or label
        for part, mask, structure in (("vertebral body", bodies == index, body_type),
                                      ("posterior elements", posterior == index, VERTEBRA)):
            if not mask.any():
                continue
            number = len(descriptions) + 1
            label_map[mask] = number
            descriptions.append(hd.seg.SegmentDescription(
                segment_number=number, segment_label=f"{label} {part}"[:64],
                segmented_property_category=ANATOMICAL_STRUCTURE,
                segmented_property_type=structure,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=(tracking_uid if part == "vertebral body"
                              else derived_uid(uid_root, tracking_uid, "posterior elements")),
                tracking_id=f"{label} {part}"[:64],
                anatomic_regions=[codes.SCT.BoneMarrow]))
    planes = sources.planes
    seg = hd.seg.Segmentation(
        source_images=sources.datasets,
        pixel_array=label_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        **enhanced_identity(series_uid, series_number, sop_uid),
        content_description="Vertebral marrow localised by marrownode",
        content_label="MARROW",
        plane_positions=[hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT,
                                                  plane.position) for plane in planes],
        plane_orientation=hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT,
                                                      planes[0].orientation),
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=planes[0].pixel_spacing,
                                                slice_thickness=planes[0].slice_thickness),
        omit_empty_frames=True,
    )
    stamp(seg, sources, series_description)
    derive_dimension_organization(seg, uid_root)
    if "Laterality" in seg and not seg.Laterality:
        del seg.Laterality  # the SEG's condition differs from the images': absent, not empty
    return seg
