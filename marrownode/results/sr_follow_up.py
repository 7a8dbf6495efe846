"""What the SR says of follow-up and what makes it the node's memory in the PACS.

Every vertebra and focus group carries its centroid (patient coordinates, three NUMs): a
later study's comparison reads them back from this SR when the node no longer holds the
report (priors/sr_reader.py). A compared set adds a TID 1502 time point context to each group,
and per focus its change since the prior (coded) with the prior's volume; matched foci keep
the prior's Tracking UID (report.py/priors.compare do that), new ones have new ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from marrownode.report import SetReport
from marrownode.vocabulary import ChangeStatus

SCHEME = "99MARROWNODE"
MM = Code("mm", "UCUM", "millimeter")
CUBIC_MM = Code("mm3", "UCUM", "cubic millimeter")
#: The centroid, one NUM per patient axis (DICOM LPS).
CENTROID = (Code("MN421", SCHEME, "Centroid, patient x (LPS)"),
            Code("MN422", SCHEME, "Centroid, patient y (LPS)"),
            Code("MN423", SCHEME, "Centroid, patient z (LPS)"))
CHANGE = Code("MN401", SCHEME, "Change since prior study")
CHANGE_CODES = {
    ChangeStatus.NEW: Code("MN402", SCHEME, "New since prior study"),
    ChangeStatus.GROWN: Code("MN403", SCHEME, "Grown since prior study"),
    ChangeStatus.STABLE: Code("MN404", SCHEME, "Stable since prior study"),
    ChangeStatus.SMALLER: Code("MN405", SCHEME, "Smaller since prior study"),
    ChangeStatus.RESOLVED: Code("MN406", SCHEME, "Resolved since prior study"),
}
PRIOR_VOLUME = Code("MN407", SCHEME, "Volume in prior study")
PRIOR_LOSS = Code("MN408", SCHEME, "Median signal loss in prior study")
PRIOR_FAT_FRACTION = Code("MN410", SCHEME, "Median fat fraction in prior study")
#: Codes a reader of our SR needs by their values (sr_reader.py).
CODE_VALUES = {"centroid": tuple(c.value for c in CENTROID)}


def centroid_items(centroid: Sequence[float]) -> list[hd.sr.Measurement]:
    """The centroid as three NUMs (mm)."""
    return [hd.sr.Measurement(name=name, value=float(value), unit=MM)
            for name, value in zip(CENTROID, centroid, strict=True)]


class FollowUp:
    """A set's comparison as SR content: nothing when the set was not compared."""

    def __init__(self, set_report: SetReport) -> None:
        self.comparison = set_report.comparison
        self.by_focus = {line["focus_index"]: line for line in self.comparison["foci"]
                         if line["focus_index"] is not None} if self.comparison else {}
        self.by_level = {line["level"]: line for line in self.comparison["vertebrae"]
                         } if self.comparison else {}

    @property
    def time_point(self) -> hd.sr.TimePointContext | None:
        """TID 1502: this study as the follow-up of the prior (dated)."""
        if self.comparison is None:
            return None
        prior = self.comparison["prior"]
        return hd.sr.TimePointContext(
            time_point=f"follow-up of {prior['study_date'] or 'an undated study'}"[:64],
            time_point_order=2,
            subject_time_point_identifier=prior["study_instance_uid"][:64])

    def focus_items(self, index: int) -> tuple[list[hd.sr.Measurement],
                                               list[hd.sr.QualitativeEvaluation]]:
        """The focus's prior volume and its change since the prior."""
        line = self.by_focus.get(index)
        if line is None:
            return [], []
        measurements = ([hd.sr.Measurement(name=PRIOR_VOLUME, value=line["prior_volume_mm3"],
                                           unit=CUBIC_MM)]
                        if line["prior_volume_mm3"] is not None else [])
        return measurements, [hd.sr.QualitativeEvaluation(CHANGE,
                                                          CHANGE_CODES[line["status"]])]

    def level_items(self, name: str) -> list[hd.sr.Measurement]:
        """The level's median signal loss and fat fraction in the prior."""
        line = self.by_level.get(name)
        if line is None:
            return []
        return [hd.sr.Measurement(name=concept, value=float(value), unit=codes.UCUM.Percent,
                                  derivation=codes.DCM.Median)
                for concept, value in ((PRIOR_LOSS, line["prior_signal_loss_percent_median"]),
                                       (PRIOR_FAT_FRACTION,
                                        line["prior_fat_fraction_percent_median"]))
                if value is not None]

    def resolved_groups(self, algorithm: hd.sr.AlgorithmIdentification,
                        sites: Callable[[str | None], list[hd.sr.FindingSite]],
                        ) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
        """One group per prior focus not found again: its prior tracking UID and size, where
        it was (aligned into this study), and 'resolved'."""
        if self.comparison is None:
            return []
        groups = []
        for line in self.comparison["foci"]:
            if line["status"] != ChangeStatus.RESOLVED:
                continue
            where = f" in {line['level']}" if line["level"] else ""
            volume = line["prior_volume_mm3"]
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=line["tracking_uid"], identifier=f"Prior focus{where}"[:64])
                if line["tracking_uid"] else hd.sr.TrackingIdentifier(
                    identifier=f"Prior focus{where}"[:64]),
                finding_type=codes.SCT.Lesion,
                finding_sites=sites(line["level"]),
                time_point_context=self.time_point,
                algorithm_id=algorithm,
                measurements=[*centroid_items(line["centroid_patient_mm"]), *(
                    [hd.sr.Measurement(name=PRIOR_VOLUME, value=volume, unit=CUBIC_MM)]
                    if volume is not None else [])],
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                    CHANGE, CHANGE_CODES[ChangeStatus.RESOLVED])]))
        return groups
