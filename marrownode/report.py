"""What the analysis of one Dixon set found, as typed records: results/ builds DICOM from a
SetReport, and report.json (and the node's index) store its JSON form (DESIGN.md's contract).

Numbers are rounded once, here, so the SR states exactly what report.json states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from marrownode.dixon.sets import DixonSet, Stack
from marrownode.quant.analysis import QuantResult
from marrownode.states import SetState


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

    def to_json(self, echo: bool = False) -> dict[str, Any]:
        """The JSON entry; echo_time_ms only for echoes."""
        entry: dict[str, Any] = {"series_instance_uid": self.series_instance_uid,
                                 "series_description": self.series_description,
                                 "images": self.images, "evidence": self.evidence}
        if echo:
            entry["echo_time_ms"] = self.echo_time_ms
        return entry


@dataclass(frozen=True)
class FocusReport:
    """One focus with its ROI statistics (ratio of means for loss and SIR)."""

    slice_count: int
    slice_indices: list[int]
    area_mm2: float | None
    volume_mm3: float | None
    voxel_count: int
    centroid_voxel: list[float]
    signal_loss_percent: float | None
    signal_loss_voxel_mean_percent: float | None
    sir: float | None
    fat_fraction_percent: float | None
    below_threshold: bool
    shell_marrow_fraction: float | None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> FocusReport:
        """From quant's focus record, floats rounded for the report."""
        return cls(
            slice_count=int(record["slice_count"]),
            slice_indices=list(record["slice_indices"]),
            area_mm2=json_number(record["area_mm2"]),
            volume_mm3=json_number(record["volume_mm3"]),
            voxel_count=int(record["voxel_count"]),
            centroid_voxel=list(record["centroid_voxel"]),
            signal_loss_percent=json_number(record["signal_loss_percent"]),
            signal_loss_voxel_mean_percent=json_number(record["signal_loss_voxel_mean_percent"]),
            sir=json_number(record["sir"]),
            fat_fraction_percent=json_number(record["fat_fraction_percent"]),
            below_threshold=bool(record["below_threshold"]),
            shell_marrow_fraction=json_number(record["shell_marrow_fraction"]),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON entry, in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class TissueSummary:
    """Medians over all tissue above the noise floor."""

    voxel_count: int | None
    signal_loss_percent_median: float | None
    fat_fraction_percent_median: float | None


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
    flags: list[str]
    state: SetState = SetState.READY
    reason: str = ""
    signal_loss_threshold_percent: float | None = None
    threshold_field_strength_t: float | None = None
    fat_fraction_method: str = ""
    noise_sigma: float | None = None
    water_fat_check: dict[str, float | None] | None = None
    tissue: TissueSummary | None = None
    foci: list[FocusReport] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

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

    def analysed(self, result: QuantResult) -> None:
        """Add the analysis: threshold, fat-fraction method, tissue medians, foci, flags."""
        maps = (result.tissue_statistics or {}).get("maps", {})
        self.state = SetState.ANALYSED
        self.signal_loss_threshold_percent = result.threshold_percent
        self.threshold_field_strength_t = result.threshold_field_strength_t
        self.fat_fraction_method = result.fat_fraction_method
        self.noise_sigma = json_number(result.noise_sigma)
        self.water_fat_check = ({k: json_number(v, 4) for k, v in result.water_fat_check.items()}
                                if result.water_fat_check else None)
        self.tissue = TissueSummary(
            voxel_count=(result.tissue_statistics or {}).get("voxel_count"),
            signal_loss_percent_median=json_number(
                maps.get("signal_loss_percent", {}).get("median")),
            fat_fraction_percent_median=json_number(
                maps.get("fat_fraction_percent", {}).get("median")))
        self.foci = [FocusReport.from_record(f) for f in result.foci]
        self.flags = list(dict.fromkeys(self.flags + result.flags))

    def failed(self, reason: str) -> None:
        """The analysis of this set raised: no numbers, no outputs."""
        self.state, self.reason = SetState.FAILED, reason

    def to_json(self) -> dict[str, Any]:
        """The set's report.json entry (DESIGN.md)."""
        def optional(entry: SeriesEntry | None) -> dict[str, Any] | None:
            return entry.to_json() if entry is not None else None

        data: dict[str, Any] = {
            "key": self.key, "orientation": self.orientation,
            "in_phase": self.in_phase.to_json(echo=True),
            "opposed_phase": self.opposed_phase.to_json(echo=True),
            "water": optional(self.water), "fat": optional(self.fat),
            "scanner_fat_fraction": optional(self.scanner_fat_fraction),
            "field_strength_t": self.field_strength_t, "flags": list(self.flags),
        }
        if self.state is SetState.FAILED:
            data.update(state=str(self.state), reason=self.reason,
                        signal_loss_threshold_percent=None, foci=[], outputs=[])
            return data
        tissue = self.tissue
        data.update(
            signal_loss_threshold_percent=self.signal_loss_threshold_percent,
            threshold_field_strength_t=self.threshold_field_strength_t,
            fat_fraction_method=self.fat_fraction_method,
            noise_sigma=self.noise_sigma,
            water_fat_check=self.water_fat_check,
            tissue={"voxel_count": tissue.voxel_count,
                    "signal_loss_percent_median": tissue.signal_loss_percent_median,
                    "fat_fraction_percent_median": tissue.fat_fraction_percent_median}
            if tissue else None,
            foci=[f.to_json() for f in self.foci],
            state=str(self.state),
            outputs=self.outputs,
        )
        return data
