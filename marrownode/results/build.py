"""All result objects of one Dixon set: built, written atomically, listed for report.json."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ParametricMapStorage

from marrownode.config import Settings
from marrownode.dixon.sets import DixonSet, Stack
from marrownode.dixon.volume import PixelCache, SetVolumes
from marrownode.quant.analysis import QuantResult
from marrownode.report import SetReport
from marrownode.report_shape import OutputEntry
from marrownode.results.beside import overlapped
from marrownode.results.common import SourcePlane, SourceSeries, with_shared_groups
from marrownode.results.display import DisplayView
from marrownode.results.follow_up_text import focus_labels
from marrownode.results.overlay import OverlayRenderer, body_labels, build_overlay_series
from marrownode.results.segmentation import build_vertebra_segmentation
from marrownode.results.set_series import (
    FAT_FRACTION_PM,
    OVERLAY,
    REPORT,
    SEGMENTATION,
    SIGNAL_LOSS_PM,
    SUMMARY,
    EarlyMaps,
    OutputSeries,
    SetSeries,
    map_series,
)
from marrownode.results.sr import RelatedReports, build_sr
from marrownode.results.summary import render_summary
from marrownode.uids import derived_uid
from marrownode.vocabulary import Flag


def _floats(values: tuple[float, ...] | None, count: int) -> Any:
    """A geometry vector of a paired frame (pairing guarantees it is there)."""
    if values is None or len(values) != count:
        raise ValueError(f"frame geometry needs {count} values, got {values!r}")
    return tuple(float(v) for v in values)


def _planes(stack: Stack, cache: PixelCache, spacing_mm: float) -> list[SourcePlane]:
    planes = []
    for frame in stack.frames:
        dataset = cache.dataset(frame.sop_instance_uid)
        thickness = dataset.get("SliceThickness") if frame.frame_index is None else None
        planes.append(SourcePlane(
            sop_class_uid=str(dataset.SOPClassUID),
            sop_instance_uid=frame.sop_instance_uid,
            frame_number=None if frame.frame_index is None else frame.frame_index + 1,
            position=_floats(frame.position, 3),
            orientation=_floats(frame.orientation, 6),
            pixel_spacing=_floats(frame.pixel_spacing, 2),
            slice_thickness=float(thickness) if thickness else spacing_mm,
        ))
    return planes


def _unique_datasets(stacks: list[Stack], cache: PixelCache) -> list[Dataset]:
    seen: dict[str, Dataset] = {}
    for stack in stacks:
        for frame in stack.frames:
            if frame.sop_instance_uid not in seen:
                seen[frame.sop_instance_uid] = cache.dataset(frame.sop_instance_uid)
    return list(seen.values())


def source_series(dixon_set: DixonSet, cache: PixelCache, volumes: SetVolumes) -> SourceSeries:
    """The in-phase series and planes the results refer to and copy from."""
    datasets = [with_shared_groups(d)
                for d in _unique_datasets([dixon_set.in_phase], cache)]
    return SourceSeries(
        reference=datasets[0],
        datasets=datasets,
        planes=_planes(dixon_set.in_phase, cache, volumes.spacing_mm[0]),
        opposed_planes=_planes(dixon_set.opposed, cache, volumes.spacing_mm[0]),
    )


def early_maps(dixon_set: DixonSet, volumes: SetVolumes, cache: PixelCache,
               settings: Settings, out_dir: Path | None, set_index: int) -> EarlyMaps:
    """The map series of a set, ready to start when its maps exist (see EarlyMaps)."""
    if out_dir is None:
        return EarlyMaps(None, None)
    sources = source_series(dixon_set, cache, volumes)
    return EarlyMaps(SetSeries(dixon_set, settings, str(sources.reference.StudyInstanceUID),
                               out_dir, set_index), sources)


def build_results(
    dixon_set: DixonSet,
    volumes: SetVolumes,
    result: QuantResult,
    cache: PixelCache,
    settings: Settings,
    out_dir: Path,
    set_report: SetReport,
    set_index: int,
    on_series: Callable[[list[OutputEntry]], None] | None = None,
    superseded: Sequence[OutputEntry] = (),
    evidence_stacks: Sequence[Stack] = (),
    early: EarlyMaps | None = None,
) -> list[OutputEntry]:
    """Build the configured result objects, write them under out_dir, return report entries.

    on_series is called with a series' entries as soon as all its files are written, so the
    node can send them while the next series is still being built. superseded: the report
    entries of this set's earlier reports (SR), which the new one names as predecessors.
    evidence_stacks: the companion series measured (post-contrast, fat-suppressed), which the
    SR lists as evidence. early: the map series, when they were started during the analysis."""
    outputs_cfg = settings.outputs
    sources = source_series(dixon_set, cache, volumes)
    study_uid = str(sources.reference.StudyInstanceUID)
    root = outputs_cfg.uid_root
    series = SetSeries(dixon_set, settings, study_uid, out_dir, set_index, evidence_stacks,
                       _comparison_key(set_report))
    identity, write = series.identity, series.write
    entries: list[OutputEntry] = []

    def publish(written: list[OutputEntry]) -> None:
        entries.extend(written)
        if on_series is not None and written:
            on_series(written)

    def emit(spec: OutputSeries, datasets: Iterable[Dataset]) -> list[OutputEntry]:
        written = write(spec, datasets)
        publish(written)
        return written

    # The SR names the maps by UID: it needs neither their pixels nor to wait for them.
    pm_series = [identity(spec)[0] for spec in (SIGNAL_LOSS_PM, FAT_FRACTION_PM)
                 if outputs_cfg.parametric_map]
    pm_references = [_image_reference(sources.reference, uid, ParametricMapStorage,
                                      derived_uid(root, uid, "instance")) for uid in pm_series]

    def report() -> list[list[OutputEntry]]:
        """The SR, built on another core while this one makes the images (it is sent last)."""
        written: list[list[OutputEntry]] = []
        if not outputs_cfg.sr:
            return written
        series_uid, number, description = identity(REPORT)
        evidence = [_header(d) for d in _unique_datasets(
            [dixon_set.in_phase, dixon_set.opposed, *evidence_stacks], cache)]
        written.append(write(REPORT, [build_sr(
            sources, evidence, set_report, result.focus_masks,
            pm_references,
            series_uid=series_uid, sop_uid=derived_uid(root, series_uid, "instance"),
            series_number=number, series_description=description, uid_root=root,
            settings_digest=series.settings_digest, related=RelatedReports(predecessors=[
                _reference(study_uid, entry["series_instance_uid"], entry["sop_class_uid"],
                           entry["sop_instance_uid"]) for entry in superseded],
                priors=_prior_reports(set_report)))]))
        return written

    def images() -> None:
        _summary_page(emit, identity, sources, volumes, result, set_report, settings)
        taken = early.take() if early is not None else None
        maps, failure = taken if taken is not None else map_series(
            series, sources, result.signal_loss, result.fat_fraction,
            result.fat_fraction_method)
        for written in maps:  # sent, and named by a failure note if the set fails
            publish(written)
        if failure is not None:
            raise failure
        _later_images(emit, identity, sources, volumes, result, set_report, settings)

    for written in overlapped(report, images):
        publish(written)
    return entries


def _comparison_key(set_report: SetReport) -> str:
    """The prior and the rule a set was compared with, or '' (no comparison)."""
    comparison = set_report.comparison
    if comparison is None:
        return ""
    return hashlib.sha256(json.dumps([comparison["prior"]["study_instance_uid"],
                                      comparison["rule"]], sort_keys=True).encode()
                          ).hexdigest()[:16]


def _prior_reports(set_report: SetReport) -> list[Dataset]:
    """The prior's SR, listed among the evidence: it is of another study, so the SR names it
    in the Pertinent Other Evidence Sequence."""
    comparison = set_report.comparison
    reference = comparison["prior"].get("report") if comparison else None
    if reference is None:
        return []
    return [_reference(reference["study_instance_uid"], reference["series_instance_uid"],
                       reference["sop_class_uid"], reference["sop_instance_uid"])]


def _summary_page(emit: Callable[[OutputSeries, Iterable[Dataset]], list[OutputEntry]],
                  identity: Callable[[OutputSeries], tuple[str, int, str]],
                  sources: SourceSeries, volumes: SetVolumes, result: QuantResult,
                  set_report: SetReport, settings: Settings) -> None:
    """The summary page: the page a radiologist reads first, written and sent first."""
    outputs_cfg = settings.outputs
    if outputs_cfg.summary:
        series_uid, number, description = identity(SUMMARY)
        page = render_summary(volumes.in_phase, result, set_report,
                              (volumes.spacing_mm[1], volumes.spacing_mm[2]),
                              outputs_cfg.disclaimer, DisplayView.of(volumes.geometry))
        emit(SUMMARY, build_overlay_series(
            sources, [page], series_uid=series_uid,
            sop_uids=[derived_uid(outputs_cfg.uid_root, series_uid, "instance")],
            series_number=number, series_description=description))


def _later_images(emit: Callable[[OutputSeries, Iterable[Dataset]], list[OutputEntry]],
                  identity: Callable[[OutputSeries], tuple[str, int, str]],
                  sources: SourceSeries, volumes: SetVolumes, result: QuantResult,
                  set_report: SetReport, settings: Settings) -> None:
    """After the page and the maps: the overlay, the segmentation."""
    outputs_cfg = settings.outputs
    root = outputs_cfg.uid_root
    if outputs_cfg.overlay:
        series_uid, number, description = identity(OVERLAY)
        written = emit(OVERLAY, build_overlay_series(
            sources, overlay_frames(volumes, result, set_report, settings.outputs.disclaimer),
            series_uid=series_uid,
            sop_uids=[derived_uid(root, series_uid, i) for i in range(len(sources.planes))],
            series_number=number, series_description=description))
        _describe_overlay_slices(written, result)
    localisation = result.localisation
    if outputs_cfg.segmentation and localisation.localised:
        series_uid, number, description = identity(SEGMENTATION)
        emit(SEGMENTATION, [build_vertebra_segmentation(
            sources, localisation.bodies, localisation.posterior, localisation.labels,
            [v.tracking_uid for v in set_report.vertebrae], levels=localisation.levels,
            series_uid=series_uid,
            sop_uid=derived_uid(root, series_uid, "instance"), series_number=number,
            series_description=description, uid_root=root)])


#: Bulk data an SR's evidence never needs: highdicom copies its evidence, pixels and all.
_BULK = {Tag("PixelData"), Tag("FloatPixelData"), Tag("DoubleFloatPixelData"),
         Tag("PerFrameFunctionalGroupsSequence")}


def _image_reference(source: Dataset, series_uid: str, sop_class_uid: str,
                     sop_uid: str) -> Dataset:
    """A result image of the source's grid by its UIDs and size: all an SR's source-of-
    measurement reference and evidence list read (it may not be built yet)."""
    reference = _reference(str(source.StudyInstanceUID), series_uid, sop_class_uid, sop_uid)
    reference.Modality = source.Modality
    reference.Rows = source.Rows
    reference.Columns = source.Columns
    return reference


def _header(dataset: Dataset) -> Dataset:
    """The dataset without its bulk data: what the SR's evidence lists and inherits. Its
    elements are taken as read (pydicom converts an element's value when it is first asked
    for, and highdicom asks for a handful: iterating would convert every one of them)."""
    header = Dataset()
    for element in dataset.elements():
        if element.tag not in _BULK:
            header[element.tag] = element
    return header


def _reference(study_uid: str, series_uid: str, sop_class_uid: str, sop_uid: str) -> Dataset:
    """Another object by its UIDs alone: what the SR's evidence and predecessor lists need."""
    reference = Dataset()
    reference.StudyInstanceUID = study_uid
    reference.SeriesInstanceUID = series_uid
    reference.SOPClassUID = sop_class_uid
    reference.SOPInstanceUID = sop_uid
    return reference


def overlay_status(set_report: SetReport) -> str:
    """The overlay's statement of what was localised and found, and the flags on a second
    line (burned into every frame)."""
    marrow = set_report.marrow
    if not marrow.localised:
        status = "MARROW NOT LOCALISED: maps only, no marrow findings"
    else:
        labels = [v.name for v in set_report.vertebrae]
        span = f"{labels[0]}-{labels[-1]}" if len(labels) > 1 else "".join(labels)
        status = (f"marrow: {len(labels)} vertebral bodies ({span}) | pattern: "
                  f"{set_report.pattern} | foci: {len(set_report.foci)}")
    flags = [f for f in set_report.flags if f != Flag.MARROW_NOT_LOCALISED]
    return status + (f"\nflags: {', '.join(flags)}" if flags else "")


def _describe_overlay_slices(entries: list[OutputEntry], result: QuantResult) -> None:
    """What each overlay slice shows, in its report entry: the console picks its thumbnails
    from the slices with marrow and foci (added fields; the contract's keys are unchanged)."""
    marrow = result.localisation.marrow  # computed on each read: once here
    foci = np.zeros(marrow.shape, dtype=bool)
    for mask in result.focus_masks:
        foci |= mask
    marrow_voxels = np.count_nonzero(marrow, axis=(1, 2))
    focus_voxels = np.count_nonzero(foci, axis=(1, 2))
    for k, entry in enumerate(entries):
        entry["slice_index"] = k
        entry["marrow_voxels"] = int(marrow_voxels[k])
        entry["focus_voxels"] = int(focus_voxels[k])


def overlay_frames(
    volumes: SetVolumes, result: QuantResult, set_report: SetReport, disclaimer: str
) -> Iterator[np.ndarray]:
    """Rendered overlay frames, one at a time (a whole-body set would not fit otherwise)."""
    tissue_values = volumes.in_phase[result.tissue]
    # tissue_values is this function's own copy: the percentiles may reorder it in place.
    window = ((float(np.percentile(tissue_values, 1, overwrite_input=True)),
               float(np.percentile(tissue_values, 99, overwrite_input=True)))
              if tissue_values.size else (0.0, float(volumes.in_phase.max() or 1)))
    foci = np.zeros(volumes.in_phase.shape, dtype=bool)
    for mask in result.focus_masks:
        foci |= mask
    marrow = result.localisation.marrow
    count = volumes.in_phase.shape[0]
    renderer = OverlayRenderer(volumes.in_phase.shape[1:], window, result.threshold_percent,
                               set_report.field_strength_t, disclaimer,
                               overlay_status(set_report))
    labels = body_labels(result.localisation.bodies,
                         [v.name for v in set_report.vertebrae])
    notes = (focus_labels(result.focus_masks, set_report) if result.focus_masks
             else [[] for _ in range(count)])
    for k in range(count):
        here = "" if marrow[k].any() else " | no marrow on this slice"
        yield renderer.render(volumes.in_phase[k], result.signal_loss[k], foci[k], marrow[k],
                              f"slice {k + 1}/{count}{here}", labels[k], notes[k])
