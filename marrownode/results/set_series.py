"""What every result series of one Dixon set shares: its identity (UIDs derived from the
settings, the source images and, for what a comparison changes, the prior), where its files
go, and the map series (parametric and derived MR), which need only the maps and so are
built on another core while the localiser still runs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
from pydicom.dataset import Dataset

from marrownode.config import Settings, content_digest
from marrownode.dixon.sets import DixonSet, Stack
from marrownode.report_shape import OutputEntry
from marrownode.results.beside import Beside
from marrownode.results.common import SourceSeries
from marrownode.results.derived_mr import build_derived_mr_series
from marrownode.results.encoding import SeriesEncoder
from marrownode.results.parametric_map import build_parametric_map
from marrownode.uids import derived_uid
from marrownode.vocabulary import FAT_FRACTION_LABELS, FatFractionMethod, OutputKind


@dataclass(frozen=True)
class OutputSeries:
    kind: OutputKind
    offset: int  # series number = base + 10 * set index + offset
    description: str


#: Derived MR signal-loss window suited to marrow: -20 % to 100 % (normal marrow 40-80 %).
MARROW_SIGNAL_LOSS_WINDOW = (40.0, 120.0)

SUMMARY = OutputSeries(OutputKind.SUMMARY, 0, "marrow summary")
SIGNAL_LOSS_PM = OutputSeries(OutputKind.PARAMETRIC_MAP, 1, "signal loss % (parametric map)")
FAT_FRACTION_PM = OutputSeries(OutputKind.PARAMETRIC_MAP, 2, "fat fraction % (parametric map)")
SIGNAL_LOSS_MR = OutputSeries(OutputKind.DERIVED_MR, 3, "signal loss % map")
FAT_FRACTION_MR = OutputSeries(OutputKind.DERIVED_MR, 4, "fat fraction % map")
OVERLAY = OutputSeries(OutputKind.OVERLAY, 5, "signal loss overlay")
REPORT = OutputSeries(OutputKind.SR, 6, "chemical-shift report (SR)")
SEGMENTATION = OutputSeries(OutputKind.SEGMENTATION, 7, "vertebral marrow (segmentation)")
#: The series whose content depends on the maps alone.
MAP_SERIES = (SIGNAL_LOSS_PM, FAT_FRACTION_PM, SIGNAL_LOSS_MR, FAT_FRACTION_MR)
#: ... and those a comparison with a prior changes.
COMPARED_SERIES = (SUMMARY, OVERLAY, REPORT)


def _stacks_digest(stacks: Iterable[Stack]) -> str:
    return hashlib.sha256("|".join(sorted(
        frame.sop_instance_uid for stack in stacks for frame in stack.frames)).encode("utf-8")
    ).hexdigest()[:16]


@dataclass
class SetSeries:
    """Names and writes the result series of one set. Other settings or other source images,
    other content: other UIDs. The maps depend on the Dixon images alone; the other series
    also on the companion series measured (evidence) and on the prior compared with."""

    dixon_set: DixonSet
    settings: Settings
    study_uid: str
    out_dir: Path
    set_index: int
    evidence_stacks: Sequence[Stack] = ()
    compared: str = ""  # the comparison's key, '' when the set was not compared

    def __post_init__(self) -> None:
        self.settings_digest = content_digest(self.settings)
        self.maps_digest = _stacks_digest(self.dixon_set.stacks())
        self.sources_digest = _stacks_digest([*self.dixon_set.stacks(), *self.evidence_stacks])

    def identity(self, spec: OutputSeries) -> tuple[str, int, str]:
        """Series Instance UID, Series Number and Series Description of a result series."""
        sources = self.maps_digest if spec in MAP_SERIES else self.sources_digest
        seeds = [self.settings_digest, sources] + (
            [self.compared] if self.compared and spec in COMPARED_SERIES else [])
        outputs = self.settings.outputs
        series_uid = derived_uid(outputs.uid_root, self.study_uid, self.dixon_set.key,
                                 spec.kind, spec.offset, *seeds)
        number = outputs.series_number_base + 10 * self.set_index + spec.offset
        return (series_uid, number,
                f"marrownode {self.dixon_set.in_phase.label} {spec.description}")

    def write(self, spec: OutputSeries, datasets: Iterable[Dataset]) -> list[OutputEntry]:
        """Write a series' instances (atomically, each); their report entries."""
        folder = self.out_dir / self.dixon_set.key / f"{spec.offset:02d}-{spec.kind}"
        encoder = SeriesEncoder()  # the series' instances share most elements
        entries = [write_entry(dataset, spec.kind, folder, self.out_dir, encoder)
                   for dataset in datasets]
        encoder.make_durable()  # before the entries go to the outbox
        return entries


def write_entry(dataset: Dataset, kind: OutputKind, folder: Path, out_dir: Path,
                encoder: SeriesEncoder) -> OutputEntry:
    """Write one result under its series folder; its report entry."""
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    encoder.write(dataset, path)
    return {
        "kind": kind,
        "sop_class_uid": str(dataset.SOPClassUID),
        "transfer_syntax_uid": str(dataset.file_meta.TransferSyntaxUID),
        "sop_instance_uid": str(dataset.SOPInstanceUID),
        "series_instance_uid": str(dataset.SeriesInstanceUID),
        "series_number": int(dataset.SeriesNumber),
        "series_description": str(dataset.SeriesDescription),
        "path": str(path.relative_to(out_dir)),
    }


def fat_fraction_window(method: FatFractionMethod | None) -> tuple[float, float]:
    """Display centre and width of the fat-fraction map: a signal fat fraction reads 0-50 %."""
    low, high = (0, 50) if method == FatFractionMethod.SIGNAL_FAT_FRACTION else (0, 100)
    return (low + high) / 2, high - low


#: The map series written (per series its entries, in the order they are sent) and, when
#: building them stopped part way, why (the series written before still count).
MapsWritten = tuple[list[list[OutputEntry]], Exception | None]


def map_series(series: SetSeries, sources: SourceSeries, signal_loss: np.ndarray,
               fat_fraction: np.ndarray, method: FatFractionMethod | None) -> MapsWritten:
    """The parametric maps and the derived MR maps the settings ask for, written."""
    written: list[list[OutputEntry]] = []
    try:
        _write_maps(series, sources, signal_loss, fat_fraction, method, written)
    except Exception as exc:  # a full disk, a value highdicom refuses: the caller decides
        return written, exc
    return written, None


@dataclass(frozen=True)
class _Map:
    """One map as its parametric map and its derived MR series show it."""

    parametric: OutputSeries
    derived: OutputSeries
    values: np.ndarray
    lut_label: str
    explanation: str
    value_range: tuple[int, int]
    window: tuple[float, float]


def _write_maps(series: SetSeries, sources: SourceSeries, signal_loss: np.ndarray,
                fat_fraction: np.ndarray, method: FatFractionMethod | None,
                written: list[list[OutputEntry]]) -> None:
    outputs = series.settings.outputs
    root = outputs.uid_root
    maps = (_Map(SIGNAL_LOSS_PM, SIGNAL_LOSS_MR, signal_loss, "SIGNAL_LOSS",
                 "Signal loss 100*(IP-OP)/IP", (-100, 100), MARROW_SIGNAL_LOSS_WINDOW),
            _Map(FAT_FRACTION_PM, FAT_FRACTION_MR, fat_fraction, "FAT_FRACTION",
                 "" if method is None else FAT_FRACTION_LABELS[method], (0, 100),
                 fat_fraction_window(method)))
    if outputs.parametric_map:
        for a_map in maps:
            series_uid, number, description = series.identity(a_map.parametric)
            written.append(series.write(a_map.parametric, [build_parametric_map(
                sources, a_map.values, label=a_map.lut_label, explanation=a_map.explanation,
                value_range=a_map.value_range, series_uid=series_uid,
                sop_uid=derived_uid(root, series_uid, "instance"), series_number=number,
                series_description=description, uid_root=root)]))
    if outputs.derived_mr:
        for a_map in maps:
            series_uid, number, description = series.identity(a_map.derived)
            written.append(series.write(a_map.derived, build_derived_mr_series(
                sources, a_map.values, label=a_map.lut_label, explanation=a_map.explanation,
                value_range=a_map.value_range, series_uid=series_uid,
                sop_uids=[derived_uid(root, series_uid, i) for i in range(len(sources.planes))],
                series_number=number, series_description=description, window=a_map.window)))


class EarlyMaps:
    """The map series of one set, built on another core from the moment the maps exist (the
    localiser then runs here for most of a set's analysis). `start` is the analysis's
    on_maps hook; `take` gives the written series; leaving the `with` block without taking
    them (the set failed) waits for the helper and removes what it wrote."""

    def __init__(self, series: SetSeries | None, sources: SourceSeries | None) -> None:
        self._series = series
        self._sources = sources
        self._helper: Beside[MapsWritten] | None = None

    def start(self, signal_loss: np.ndarray, fat_fraction: np.ndarray,
              method: FatFractionMethod | None) -> None:
        """Begin building the map series (nothing on one core, or without an output folder:
        the maps are then built with the other results)."""
        series, sources = self._series, self._sources
        if (series is None or sources is None or len(os.sched_getaffinity(0)) < 2
                or not (series.settings.outputs.parametric_map
                        or series.settings.outputs.derived_mr)):
            return
        self._helper = Beside(lambda: map_series(series, sources, signal_loss, fat_fraction,
                                                 method))

    def take(self) -> MapsWritten | None:
        """The map series written beside, or None when they were not started early."""
        helper, self._helper = self._helper, None
        return None if helper is None else helper.result()

    def __enter__(self) -> EarlyMaps:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        helper, self._helper = self._helper, None
        if helper is None or self._series is None:
            return
        try:
            written, _ = helper.result()
        except Exception:  # the set already failed for its own reason
            return
        for entries in written:
            for entry in entries:
                (self._series.out_dir / entry["path"]).unlink(missing_ok=True)
