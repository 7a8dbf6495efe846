"""What the analysis of one Dixon set found, as typed records: results/ builds DICOM from a
SetReport, and report.json (and the node's index) store its JSON form (report_shape.py; the
contract is in docs/architecture.md).

Numbers are rounded once, here, so the SR states exactly what report.json states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, cast

from marrownode.dixon.sets import DixonSet, Stack
from marrownode.quant.analysis import QuantResult, VertebraFinding, focus_record
from marrownode.quant.companions import CompanionMeasures, enhancing, high_signal
from marrownode.quant.geometry import VolumeGeometry
from marrownode.report_shape import (
    CompanionsShape,
    ComparisonShape,
    EndplateFindingShape,
    FocusShape,
    OutputEntry,
    PosteriorElements,
    SeriesShape,
    SetShape,
    VertebraShape,
    WaterFatCheckShape,
)
from marrownode.states import SetState
from marrownode.uids import derived_uid
from marrownode.vocabulary import (
    FAT_FRACTION_LABELS,
    FatFractionMethod,
    FatSuppression,
    Flag,
    FocusCategory,
    LocalisationMethod,
    Margin,
    Pattern,
)


def json_number(value: float | None, digits: int = 3) -> float | None:
    """A finite float rounded for the report; None for missing or not finite."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


@dataclass(frozen=True)
class SeriesEntry:
    """A source series a set uses, as report.json names it."""

    series_instance_uid: str
    series_description: str
    images: int
    evidence: str
    echo_time_ms: float | None = None

    @classmethod
    def of(cls, stack: Stack, echo: bool = False) -> SeriesEntry:
        """The entry for a stack (echo: an in- or opposed-phase echo, with its TE)."""
        return cls(stack.series_uid, stack.first.series_description, len(stack.frames),
                   stack.evidence, stack.echo_time if echo else None)

    def to_json(self, echo: bool = False) -> SeriesShape:
        """The JSON entry; echo_time_ms only for echoes."""
        entry: SeriesShape = {"series_instance_uid": self.series_instance_uid,
                                 "series_description": self.series_description,
                                 "images": self.images, "evidence": self.evidence}
        if echo:
            entry["echo_time_ms"] = self.echo_time_ms
        return entry


@dataclass(frozen=True)
class FocusReport:
    """One focus inside localised marrow, with its ROI statistics (ratio of means for loss
    and SIR), size, position and category."""

    vertebra: str | None
    level: str | None
    slice_count: int
    slice_indices: list[int]
    area_mm2: float | None
    volume_mm3: float | None
    voxel_count: int
    centroid_patient_mm: list[float]
    signal_loss_percent: float | None
    sir: float | None
    fat_fraction_percent: float | None
    below_threshold: bool
    category: FocusCategory
    margin_sharpness: float | None
    margin: Margin | None
    in_phase_to_marrow_ratio: float | None
    enhancement_percent: float | None = None
    enhancement_ratio_to_normal: float | None = None
    enhancing: bool | None = None
    fat_suppressed_ratio: float | None = None
    high_signal_after_fat_saturation: bool | None = None
    fat_suppression: FatSuppression | None = None
    tracking_uid: str = ""

    @property
    def site(self) -> str | None:
        """Where it lies, as a reader names it: its level (L3), else its body (V3)."""
        return self.level or self.vertebra

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> FocusReport:
        """From quant's focus record, floats rounded for the report."""
        return cls(
            vertebra=record["vertebra"],
            level=record.get("level"),
            slice_count=int(record["slice_count"]),
            slice_indices=list(record["slice_indices"]),
            area_mm2=json_number(record["area_mm2"]),
            volume_mm3=json_number(record["volume_mm3"]),
            voxel_count=int(record["voxel_count"]),
            centroid_patient_mm=list(record["centroid_patient_mm"]),
            signal_loss_percent=json_number(record["signal_loss_percent"]),
            sir=json_number(record["sir"]),
            fat_fraction_percent=json_number(record["fat_fraction_percent"]),
            below_threshold=bool(record["below_threshold"]),
            category=FocusCategory(record["category"]),
            margin_sharpness=json_number(record["margin_sharpness"], 2),
            margin=Margin(record["margin"]) if record["margin"] else None,
            in_phase_to_marrow_ratio=json_number(record["in_phase_to_marrow_ratio"]),
        )

    def to_json(self) -> FocusShape:
        """The JSON entry, in field order."""
        return cast(FocusShape, {f.name: getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class VertebraReport:
    """One localised vertebral body: medians over its marrow, pattern, T1 internal standard."""

    label: str
    level: str | None
    centroid_patient_mm: list[float]
    voxel_count: int
    volume_mm3: float | None
    signal_loss_percent_median: float | None
    sir_median: float | None
    fat_fraction_percent_median: float | None
    fraction_below_threshold: float | None
    pattern: Pattern
    in_phase_to_muscle_ratio: float | None
    in_phase_to_disc_ratio: float | None
    posterior_elements: PosteriorElements
    tracking_uid: str
    micronodule_count: int = 0
    endplate_findings: list[EndplateFindingShape] = field(default_factory=list)
    enhancement_percent: float | None = None
    enhancement_ratio_to_normal: float | None = None
    fat_suppressed_ratio: float | None = None

    @property
    def name(self) -> str:
        """The body as a reader names it: its level (L3), else its number (V3)."""
        return self.level or self.label

    @classmethod
    def of(cls, finding: VertebraFinding, tracking_uid: str,
           level: str | None = None) -> VertebraReport:
        """From quant's finding, rounded for the report; level: its anatomical name, when
        the anatomy fixed it."""
        return cls(
            label=finding.label,
            level=level,
            centroid_patient_mm=[round(c, 1) for c in finding.centroid_patient_mm],
            voxel_count=finding.voxel_count,
            volume_mm3=json_number(finding.volume_mm3, 1),
            signal_loss_percent_median=json_number(finding.signal_loss_percent_median),
            sir_median=json_number(finding.sir_median),
            fat_fraction_percent_median=json_number(finding.fat_fraction_percent_median),
            fraction_below_threshold=json_number(finding.fraction_below_threshold),
            pattern=finding.pattern,
            in_phase_to_muscle_ratio=json_number(finding.in_phase_to_muscle_ratio),
            in_phase_to_disc_ratio=json_number(finding.in_phase_to_disc_ratio),
            posterior_elements={
                "voxel_count": finding.posterior_voxel_count,
                "signal_loss_percent_median": json_number(
                    finding.posterior_signal_loss_percent_median)},
            tracking_uid=tracking_uid,
            micronodule_count=finding.micronodule_count,
            endplate_findings=[
                {"endplate": band.endplate, "thickness_mm": round(band.thickness_mm, 1),
                 "signal_loss_percent": json_number(band.signal_loss_percent, 1)}
                for band in finding.endplate_bands],
        )

    def to_json(self) -> VertebraShape:
        """The JSON entry, in field order."""
        return cast(VertebraShape, {f.name: getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class MarrowStatus:
    """Whether the marrow was localised, how, and why (report.json's `marrow`)."""

    localised: bool
    method: str
    reason: str
    vertebra_count: int = 0
    levels_reason: str = ""  # how the level names were fixed, or why they were not


@dataclass
class SetReport:
    """One Dixon set: its series, field strength, flags, state and, once analysed, its
    numbers, foci and outputs."""

    key: str
    orientation: str
    in_phase: SeriesEntry
    opposed_phase: SeriesEntry
    water: SeriesEntry | None
    fat: SeriesEntry | None
    scanner_fat_fraction: SeriesEntry | None
    field_strength_t: float | None
    flags: list[Flag]
    state: SetState = SetState.READY
    reason: str = ""
    signal_loss_threshold_percent: float | None = None
    threshold_field_strength_t: float | None = None
    fat_fraction_method: FatFractionMethod | None = None
    noise_sigma: float | None = None
    noise_source: str = ""
    water_fat_check: WaterFatCheckShape | None = None
    marrow: MarrowStatus = MarrowStatus(False, LocalisationMethod.NONE, "not analysed")
    pattern: Pattern = Pattern.NOT_ASSESSED
    marrow_summary: dict[str, float | int | None] | None = None
    muscle_in_phase: float | None = None
    disc_in_phase: float | None = None
    vertebrae: list[VertebraReport] = field(default_factory=list)
    foci: list[FocusReport] = field(default_factory=list)
    outputs: list[OutputEntry] = field(default_factory=list)
    companions: CompanionsShape | None = None
    comparison: ComparisonShape | None = None

    @classmethod
    def of(cls, dixon_set: DixonSet) -> SetReport:
        """The set as found, before analysis."""
        def entry(stack: Stack | None) -> SeriesEntry | None:
            return SeriesEntry.of(stack) if stack is not None else None

        return cls(
            key=dixon_set.key, orientation=dixon_set.in_phase.label,
            in_phase=SeriesEntry.of(dixon_set.in_phase, echo=True),
            opposed_phase=SeriesEntry.of(dixon_set.opposed, echo=True),
            water=entry(dixon_set.water), fat=entry(dixon_set.fat),
            scanner_fat_fraction=entry(dixon_set.scanner_fat_fraction),
            field_strength_t=dixon_set.field_strength_t, flags=list(dixon_set.flags))

    def analysed(self, result: QuantResult, geometry: VolumeGeometry, uid_root: str,
                 study_uid: str, sharp_margin: float) -> None:
        """Add the analysis: threshold, fat-fraction method, marrow, vertebrae, foci, flags."""
        self.state = SetState.ANALYSED
        self.signal_loss_threshold_percent = result.threshold_percent
        self.threshold_field_strength_t = result.threshold_field_strength_t
        self.fat_fraction_method = result.fat_fraction_method
        self.noise_sigma = json_number(result.noise_sigma)
        self.noise_source = result.noise_source
        check = result.water_fat_check
        self.water_fat_check = None if check is None else WaterFatCheckShape(
            sum_error=json_number(check.sum_error, 4),
            difference_error=json_number(check.difference_error, 4),
            noise_error=json_number(check.noise_error, 4))
        localisation = result.localisation
        self.marrow = MarrowStatus(localisation.localised, localisation.method,
                                   localisation.reason, len(localisation.labels),
                                   localisation.levels_reason)
        self.pattern = result.pattern
        self.marrow_summary = ({k: json_number(v) if isinstance(v, float) else v
                                for k, v in result.marrow_summary.items()}
                               if result.marrow_summary else None)
        self.muscle_in_phase = json_number(result.muscle_in_phase, 1)
        self.disc_in_phase = json_number(result.disc_in_phase, 1)
        levels = localisation.levels
        self.vertebrae = [
            VertebraReport.of(v, derived_uid(uid_root, study_uid, self.key, "vertebra", v.label),
                              levels[v.number - 1] if 0 < v.number <= len(levels) else None)
            for v in result.vertebrae]
        threshold = result.threshold_percent
        self.foci = ([replace(FocusReport.from_record(focus_record(
            f, geometry, threshold, localisation.labels, sharp_margin, localisation.levels)),
            tracking_uid=derived_uid(uid_root, study_uid, self.key, "focus", number))
            for number, f in enumerate(result.foci, start=1)] if threshold is not None else [])
        self.flags = list(dict.fromkeys(self.flags + result.flags))

    def joined(self, companions: CompanionsShape, measures: CompanionMeasures | None) -> None:
        """Add what the companion series measured (docs/companions.md), rounded here."""
        self.companions = companions
        if measures is None:
            return
        normal = measures.normal_enhancement_percent
        self.vertebrae = [replace(
            v, enhancement_percent=json_number(m.enhancement_percent, 1),
            enhancement_ratio_to_normal=json_number(m.enhancement_ratio_to_normal, 2),
            fat_suppressed_ratio=json_number(m.fat_suppressed_ratio, 2))
            for v, m in zip(self.vertebrae, measures.vertebrae, strict=True)]
        self.foci = [replace(
            f, enhancement_percent=json_number(m.enhancement_percent, 1),
            enhancement_ratio_to_normal=json_number(m.enhancement_ratio_to_normal, 2),
            enhancing=(enhancing(m.enhancement_percent, normal)
                       if companions["post_contrast"] else None),
            fat_suppressed_ratio=json_number(m.fat_suppressed_ratio, 2),
            high_signal_after_fat_saturation=(high_signal(m.fat_suppressed_ratio)
                                              if companions["fat_suppressed"] else None),
            fat_suppression=suppression)
            for f, m, suppression in zip(self.foci, measures.foci, measures.fat_suppression,
                                         strict=True)]
        self.flags = list(dict.fromkeys(self.flags + measures.flags))

    @property
    def fat_fraction_label(self) -> str:
        """What the fat fraction shown is, in words."""
        if self.fat_fraction_method is None:
            return ""
        return FAT_FRACTION_LABELS[self.fat_fraction_method]

    def failed(self, reason: str) -> None:
        """The analysis of this set raised: no numbers, no outputs."""
        self.state, self.reason = SetState.FAILED, reason

    def to_json(self) -> SetShape:
        """The set's report.json entry (docs/architecture.md)."""
        def optional(entry: SeriesEntry | None) -> SeriesShape | None:
            return entry.to_json() if entry is not None else None

        data: dict[str, Any] = {  # in report.json's order, which readers and diffs see
            "key": self.key, "orientation": self.orientation,
            "in_phase": self.in_phase.to_json(echo=True),
            "opposed_phase": self.opposed_phase.to_json(echo=True),
            "water": optional(self.water), "fat": optional(self.fat),
            "scanner_fat_fraction": optional(self.scanner_fat_fraction),
            "field_strength_t": self.field_strength_t, "flags": list(self.flags),
        }
        if self.state is SetState.FAILED:
            data.update(state=str(self.state), reason=self.reason,
                        signal_loss_threshold_percent=None, foci=[], outputs=self.outputs)
            return cast(SetShape, data)
        data.update(
            signal_loss_threshold_percent=self.signal_loss_threshold_percent,
            threshold_field_strength_t=self.threshold_field_strength_t,
            fat_fraction_method=self.fat_fraction_method,
            fat_fraction_label=self.fat_fraction_label,
            noise_sigma=self.noise_sigma,
            noise_source=self.noise_source,
            water_fat_check=self.water_fat_check,
            marrow={"localised": self.marrow.localised, "method": self.marrow.method,
                    "reason": self.marrow.reason, "levels_reason": self.marrow.levels_reason},
            pattern=self.pattern,
            marrow_summary=self.marrow_summary,
            t1_reference={"muscle_in_phase": self.muscle_in_phase,
                          "disc_in_phase": self.disc_in_phase},
            vertebrae=[v.to_json() for v in self.vertebrae],
            foci=[f.to_json() for f in self.foci],
            companions=self.companions,
            comparison=self.comparison,
            state=str(self.state),
            outputs=self.outputs,
        )
        return cast(SetShape, data)
