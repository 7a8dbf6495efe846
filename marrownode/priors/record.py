"""The prior as the comparison needs it (report_shape.PriorShape), from a study's report, and
which of a patient's studies is the prior of another."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from marrownode.report_shape import (
    ObjectReference,
    PriorBodyShape,
    PriorFocusShape,
    PriorSetShape,
    PriorShape,
    StudyShape,
)
from marrownode.states import SetState
from marrownode.vocabulary import OutputKind, Pattern, PriorSource


@dataclass(frozen=True)
class Patient:
    """Who a study belongs to: Patient ID with its issuer. Two studies are the same
    patient's only when both match exactly (an ID without an issuer matches only an ID
    without one: another issuer may give the same number to someone else)."""

    patient_id: str
    issuer: str

    @classmethod
    def of(cls, header: Mapping[str, Any]) -> Patient | None:
        """The patient of a header (index row or summary); None without a Patient ID."""
        patient_id = str(header.get("patient_id") or "").strip()
        if not patient_id:
            return None
        return cls(patient_id, str(header.get("issuer_of_patient_id") or "").strip())


@dataclass(frozen=True)
class StudyMoment:
    """When a study was made (Study Date and Time), comparable across studies."""

    study_date: str
    study_time: str

    @property
    def key(self) -> str:
        """YYYYMMDDHHMMSS.ffffff, sortable; a missing time sorts first in its day."""
        digits = "".join(c for c in self.study_time if c.isdigit() or c == ".")
        whole, _, fraction = digits.partition(".")
        return f"{self.study_date[:8]}{whole[:6].ljust(6, '0')}.{fraction[:6].ljust(6, '0')}"

    def day(self) -> date | None:
        """The study's date, or None when it has none that parses."""
        try:
            return date(int(self.study_date[:4]), int(self.study_date[4:6]),
                        int(self.study_date[6:8]))
        except ValueError:
            return None

    def is_before(self, other: StudyMoment) -> bool:
        """Strictly earlier; a study without a date is never another's prior."""
        return self.day() is not None and other.day() is not None and self.key < other.key

    def within(self, other: StudyMoment, years: int) -> bool:
        """Whether this (earlier) study lies within `years` before other."""
        mine, theirs = self.day(), other.day()
        return mine is not None and theirs is not None and (
            theirs - mine <= timedelta(days=round(365.25 * years)))


def choose_prior(current: StudyMoment, candidates: Iterable[tuple[StudyMoment, PriorShape]],
                 look_back_years: int) -> PriorShape | None:
    """The most recent candidate strictly earlier than current, within the look-back."""
    earlier = [(moment, prior) for moment, prior in candidates
               if moment.is_before(current) and moment.within(current, look_back_years)]
    if not earlier:
        return None
    return max(earlier, key=lambda item: item[0].key)[1]


def moment_of(header: Mapping[str, Any]) -> StudyMoment:
    """When the study of a header (or an index row) was made."""
    return StudyMoment(str(header.get("study_date") or ""), str(header.get("study_time") or ""))


def prior_among(header: Mapping[str, Any],
                analysed: Iterable[tuple[Mapping[str, Any], StudyShape]],
                look_back_years: int, source: PriorSource = PriorSource.INPUTS,
                ) -> PriorShape | None:
    """The prior of the study of header among analysed studies (a header of each, and its
    report): the same patient's most recent earlier one with an analysed set."""
    patient = Patient.of(header)
    if patient is None:
        return None
    candidates = []
    for other, report in analysed:
        if Patient.of(other) != patient:
            continue
        prior = prior_from_report(report, moment_of(other), source)
        if prior is not None:
            candidates.append((moment_of(other), prior))
    return choose_prior(moment_of(header), candidates, look_back_years)


def prior_from_report(report: StudyShape, moment: StudyMoment,
                      source: PriorSource) -> PriorShape | None:
    """A study's analysed sets as a prior; None when no set was analysed (a prior must have
    a Dixon set the node measured)."""
    sets: list[PriorSetShape] = []
    reports: list[ObjectReference] = []
    for dixon_set in report["dixon_sets"]:
        if dixon_set.get("state") != SetState.ANALYSED:
            continue
        sets.append({
            "orientation": dixon_set["orientation"],
            "pattern": dixon_set.get("pattern", Pattern.NOT_ASSESSED),
            "vertebrae": [_body(v) for v in dixon_set.get("vertebrae", [])],
            "foci": [_focus(f) for f in dixon_set["foci"] if f["volume_mm3"] is not None],
        })
        reports += [{"study_instance_uid": report["study_instance_uid"],
                     "series_instance_uid": entry["series_instance_uid"],
                     "sop_class_uid": entry["sop_class_uid"],
                     "sop_instance_uid": entry["sop_instance_uid"]}
                    for entry in dixon_set["outputs"] if entry["kind"] == OutputKind.SR]
    if not sets:
        return None
    prior: PriorShape = {"study_instance_uid": report["study_instance_uid"],
                         "study_date": moment.study_date, "study_time": moment.study_time,
                         "source": source, "sets": sets}
    if reports:
        prior["report"] = reports[0]
    return prior


def _body(vertebra: Mapping[str, Any]) -> PriorBodyShape:
    return {"name": vertebra.get("level") or vertebra["label"],
            "centroid_patient_mm": list(vertebra["centroid_patient_mm"]),
            "signal_loss_percent_median": vertebra.get("signal_loss_percent_median"),
            "fat_fraction_percent_median": vertebra.get("fat_fraction_percent_median")}


def _focus(focus: Mapping[str, Any]) -> PriorFocusShape:
    return {"site": focus.get("level") or focus.get("vertebra"),
            "centroid_patient_mm": list(focus["centroid_patient_mm"]),
            "volume_mm3": float(focus["volume_mm3"]),
            "tracking_uid": str(focus.get("tracking_uid") or "")}
