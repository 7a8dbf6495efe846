"""The companion series' measurements as SR content, each naming the image it was read
nearest to (docs/companions.md)."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from marrownode.report import FocusReport, SetReport, VertebraReport

SCHEME = "99MARROWNODE"
PERCENT = codes.UCUM.Percent
RATIO = Code("1", "UCUM", "no units")
#: Companion series (docs/companions.md): each measured against the patient's normal marrow.
ENHANCEMENT = Code("MN301", SCHEME, "Enhancement after contrast")
ENHANCEMENT_TO_NORMAL = Code("MN302", SCHEME, "Enhancement relative to normal marrow")
FAT_SUPPRESSED_RATIO = Code("MN303", SCHEME, "Fat-suppressed signal relative to normal marrow")


class CompanionImages:
    """The companion series' images among the evidence: each companion measurement names the
    image of its series nearest the region measured, so a viewer can open it there."""

    def __init__(self, set_report: SetReport, evidence: Sequence[Dataset]) -> None:
        joined = set_report.companions
        series = {"post_contrast": joined["post_contrast"] if joined else None,
                  "fat_suppressed": joined["fat_suppressed"] if joined else None}
        self.images = {kind: [d for d in evidence
                              if d.SeriesInstanceUID == entry["series_instance_uid"]]
                       for kind, entry in series.items() if entry}

    def _nearest(self, kind: str, centroid: Sequence[float]
                 ) -> list[hd.sr.SourceImageForMeasurement] | None:
        images = self.images.get(kind)
        if not images:
            return None
        point = np.asarray(centroid, dtype=float)
        nearest = min(images, key=lambda d: _distance_to_plane(d, point))
        return [hd.sr.SourceImageForMeasurement(
            referenced_sop_class_uid=nearest.SOPClassUID,
            referenced_sop_instance_uid=nearest.SOPInstanceUID)]

    def measurements(self, region: VertebraReport | FocusReport, centroid: Sequence[float],
                     algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement | None]:
        """Enhancement (and its ratio to normal marrow) and the fat-suppressed ratio."""
        post, fat = self._nearest("post_contrast", centroid), self._nearest(
            "fat_suppressed", centroid)
        items: list[hd.sr.Measurement | None] = []
        for name, value, unit, images in (
                (ENHANCEMENT, region.enhancement_percent, PERCENT, post),
                (ENHANCEMENT_TO_NORMAL, region.enhancement_ratio_to_normal, RATIO, post),
                (FAT_SUPPRESSED_RATIO, region.fat_suppressed_ratio, RATIO, fat)):
            if value is not None and images:
                items.append(hd.sr.Measurement(
                    name=name, value=float(value), unit=unit, derivation=codes.DCM.Median,
                    algorithm_id=algorithm, referenced_images=images))
        return items


def _distance_to_plane(image: Dataset, point: np.ndarray) -> float:
    """How far (mm) the point lies from the image's plane."""
    orientation = np.asarray(image.ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    return abs(float(np.dot(point - np.asarray(image.ImagePositionPatient, dtype=float),
                            normal)))
